"""Real parts on loopback, shared by the test suite and the benchmarks.

A DNS server serving zones given as data (``dnsserver``), destination MX
servers on aiosmtpd (``mxserver``), the three brokers (``brokers``), and one
mailflow installation in a directory of its own, whose processes are real
(``instance``).  Nothing here is mailflow itself; nothing here is shipped.
"""
