"""Connection counting and the accept-error log throttle (issue 10, item 16)."""

from __future__ import annotations

import asyncio
import errno
import logging

from mailflow.smtpd.limits import AcceptErrorThrottle, Connections, auth_delay


def test_connections_are_counted_per_client_and_in_all():
    c = Connections(total=4, per_client=2)  # the last place is kept for trusted clients
    assert c.admit("a") is None and c.admit("a") is None
    assert "from your address" in (c.admit("a") or "")
    assert c.admit("b") is None
    assert (c.admit("c") or "").startswith("421 4.7.0 Too many connections")
    c.leave("a")
    assert c.admit("c") is None
    assert c.open == 3 and dict(c.by_client) == {"a": 1, "b": 1, "c": 1}


def test_relay_acl_clients_keep_a_share_of_the_places():
    """A crowd of strangers (AUTH guessers) must not lock the host's own applications out."""
    c = Connections(total=20, per_client=20)
    while c.admit("stranger") is None:
        pass
    assert c.open == 18 and c.reserved == 2
    assert c.admit("app", trusted=True) is None and c.admit("app", trusted=True) is None
    assert (c.admit("app", trusted=True) or "").startswith("421")


def test_a_refused_client_is_logged_once_a_minute():
    c = Connections(total=2, per_client=2)
    assert c.worth_logging("x") and not c.worth_logging("x") and c.worth_logging("y")


def test_auth_delay_grows_with_each_failure():
    assert [auth_delay(n, 0.5) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]


def test_out_of_descriptors_is_logged_once_a_minute(caplog):
    loop = asyncio.new_event_loop()
    try:
        throttle = AcceptErrorThrottle(every=60)
        context = {"message": "socket.accept() out of system resource",
                   "exception": OSError(errno.EMFILE, "Too many open files")}
        with caplog.at_level(logging.ERROR, logger="mailflow.smtpd.limits"):
            for _ in range(100):
                throttle(loop, context)
        [record] = caplog.records
        assert "Too many open files" in record.getMessage()
        assert throttle.suppressed == 99
        throttle.last -= 61  # a minute later: one line, with the count of the ones held back
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="mailflow.smtpd.limits"):
            throttle(loop, context)
        [record] = caplog.records
        assert "99 more in the last 60 s" in record.getMessage()
    finally:
        loop.close()


def test_other_loop_errors_go_to_the_default_handler(caplog):
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            AcceptErrorThrottle()(loop, {"message": "something else"})
        assert "something else" in caplog.text
    finally:
        loop.close()
