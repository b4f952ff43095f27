"""The shared suppression list on Redis: an empty list is not asked for at every RCPT."""

import time

from harness import brokers
from mailflow.suppress.store import REDIS_KEY, Entry, RedisStore, check


def test_a_redis_list_found_empty_is_known_empty_until_an_entry_is_added():
    """While it is known empty, smtpd answers a RCPT without a thread for the check; an entry
    added here ends that at once (one added elsewhere within a second, as before)."""
    brokers.require("Redis", "127.0.0.1", 6379)
    store = RedisStore(brokers.REDIS_URL)
    store.client.delete(REDIS_KEY)
    assert not store.known_empty()  # never asked: a check must ask
    assert check(store, "someone@dest.example") is None
    assert store.known_empty()
    store.add(Entry("someone@dest.example", "bounced", time.time()))
    assert not store.known_empty()
    assert check(store, "someone@dest.example") is not None
    assert not store.known_empty()  # not empty: every check asks
    store.client.delete(REDIS_KEY)
