"""How long a claim lasts unrenewed, and the clock leases are measured by (docs/architecture.md).

The owner side (claims, expiry) and the network side (a holder on another host,
mailflow/relay/fence.py) must agree on these, so they are said once, here.
"""

from __future__ import annotations

import time

from mailflow.config import environ

#: A claim not renewed for this long is given back to pending/ by the queue manager.
LEASE_SECONDS: float = environ.value("MAILFLOW_LEASE_SECONDS")
#: How often a holder renews its claims (and an owner's worker checks it hears the broker).
RENEW_EVERY = min(10.0, LEASE_SECONDS / 4)
#: A holder on another host starts no message once this much of a lease has passed
#: since its last renewal that the broker took: half a lease is left for the message
#: under way, and for the owner to hear the renewal.
FENCE_SECONDS = LEASE_SECONDS / 2
#: How long a parcel (a claim lent to any worker) may wait in the broker for a holder:
#: the owner keeps a claim nobody has renewed yet that long before the lease starts to
#: count.  A minute at most: a claim whose holder died before its first renewal is back
#: within a lease and a minute; one whose holder renewed it, a lease after the last
#: renewal.  A parcel taken later than ``wait + lease/2`` is handed back unsent.
PARCEL_WAIT_SECONDS: float = environ.value("MAILFLOW_PARCEL_WAIT_SECONDS") or min(60.0, LEASE_SECONDS)


def clock() -> float:
    """Seconds that keep counting while the host is suspended or the process is stopped
    (CLOCK_BOOTTIME): a holder frozen past its fence must see that it was."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
