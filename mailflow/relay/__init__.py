"""The network side: everything that talks to the network to deliver.

May run on any worker host: MX lookup and address resolution (``mx``), what a
``get_mx`` answer means (``answers``), the SMTP/LMTP client session
(``client``), the connection pool (``pool``) and the outbound TLS policy
(``tlspolicy``).  Nothing here reads or writes a queue directory.
"""
