"""The owner side: everything that touches a queue directory.

Runs on the host that owns the queue: the entry file and its name (``entry``,
``todo``, ``hmail``), the directory (``spool``), claims and their leases
(``claims``), the queue manager (``manager``), what an attempt's outcome does
to an entry (``outcomes``), bounces (``dsn``, ``bounces``), flush, counters,
queueing new mail (``submission``) and the operator's tools (``tools``).
"""
