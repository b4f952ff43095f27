"""Adaptive backoff's decisions (mailflow/relay/backoff.py) and their store, on this host and
in Redis: halvings, their echo, the floor, the steps back, suspensions after strikes."""

from __future__ import annotations

import threading

import pytest

from harness import brokers
from mailflow.classify.actions import Policy
from mailflow.classify.actions import load as load_actions
from mailflow.config.files import ConfigError
from mailflow.relay import backoff
from mailflow.relay.backoff import ECHO_MS, Meter, State, hit, site_of, strike
from mailflow.relay.shaping import LocalBackend, RedisBackend

POLICY = Policy(period=1800, floor=2)
MIN = 60_000


@pytest.mark.parametrize("host, site", [
    ("gmail-smtp-in.l.google.com", "google.com"),
    ("alt1.gmail-smtp-in.l.google.com.", "google.com"),
    ("example-com.mail.protection.outlook.com", "outlook.com"),
    ("mta7.am0.yahoodns.net", "yahoodns.net"),
    ("mx.example.co.uk", "example.co.uk"),
    ("mx1.dest.test", "dest.test"),  # no public suffix: the last two labels
    ("[127.0.0.2]", "127.0.0.2"),
    ("localhost", "localhost"),
])
def test_a_site_is_the_mx_hosts_registrable_domain(host, site):
    assert site_of(host) == site


def test_a_reply_halves_an_echo_does_not_a_repeat_does_down_to_the_floor():
    now = 10 * MIN
    st = hit(State(), now, POLICY, conns=10, rate=600)
    assert st.limits(now, POLICY) == (5, 300)
    st = hit(st, now + ECHO_MS - 1, POLICY, conns=99, rate=9999)  # replies already in flight
    assert st.limits(now + ECHO_MS, POLICY) == (5, 300) and (st.conns, st.rate) == (10, 600)
    at = now + ECHO_MS
    for expected in ((2, 150), (1, 75), (1, 37), (1, 18), (1, 9), (1, 4), (1, 2), (1, 2)):
        st = hit(st, at, POLICY, conns=10, rate=600)
        assert st.limits(at, POLICY) == expected
        at += ECHO_MS
    assert st.level == 8  # at the floor, a repeat halves no further


def test_the_limits_come_back_a_step_per_quiet_period_then_it_is_over():
    now, period = 10 * MIN, POLICY.period * 1000
    st = hit(State(), now, POLICY, conns=8, rate=400)
    st = hit(st, now + ECHO_MS, POLICY, conns=8, rate=400)
    last = now + ECHO_MS
    assert st.limits(last + period - 1, POLICY) == (2, 100)  # a full period at the worst
    assert st.limits(last + period, POLICY) == (4, 200)  # one step back
    assert st.fraction(last + period, POLICY) == 0.5
    assert st.active(last + 2 * period - 1, POLICY)
    assert not st.active(last + 2 * period, POLICY) and st.ends_ms(POLICY) == last + 2 * period
    assert st.fraction(last + 2 * period, POLICY) == 1.0
    # a new backoff later starts from the normal limits it is told then, not the old ones
    again = hit(st, last + 3 * period, POLICY, conns=20, rate=100)
    assert again.limits(last + 3 * period, POLICY) == (10, 50)


def test_suspend_class_replies_suspend_after_n_in_the_window():
    policy = Policy(suspend_after=3, suspend_window=600, suspend_for=900)
    now = 100 * MIN
    st = strike(State(), now - 601_000, policy)  # outside the window by the third
    st = strike(st, now - 1000, policy)
    st = strike(st, now, policy)
    assert st.suspended_ms == 0 and len(st.strikes) == 2
    st = strike(st, now + 1, policy)
    assert st.suspended_ms == now + 1 + 900_000 and st.strikes == []
    assert st.active(now + 2, policy) and st.fraction(now + 2, policy) == 0.0


def test_a_damaged_state_is_no_backoff():
    assert State.from_json(b"{not json") == State()
    assert State.from_json('{"level": 2, "unknown": 1}').level == 2


def test_the_meter_counts_the_last_minute():
    meter = Meter()
    for n in range(30):
        meter.count("g/default", now=600.0 + n)  # 30 in the first half of a minute
    assert meter.per_minute("g/default", now=630.0) == 30
    for n in range(10):
        meter.count("g/default", now=660.0 + n)
    assert meter.per_minute("g/default", now=690.0) == 10 + 15  # the last minute's half still in
    assert meter.per_minute("g/default", now=800.0) == 0


def test_classify_ini_actions_set_the_policy(tmp_path):
    path = tmp_path / "classify.ini"
    path.write_text("[actions]\nbackoff = RateLimited\nbackoff_for = 5m\nbackoff_floor = 3\n"
                    "suspend = SpamBlock, ReputationBlock\nsuspend_after = 2 in 1h\nsuspend_for = 2h\n")
    policy = load_actions(path).backoff
    assert policy == Policy(classes=frozenset({"RateLimited"}), period=300, floor=3,
                            suspend=frozenset({"SpamBlock", "ReputationBlock"}), suspend_after=2,
                            suspend_window=3600, suspend_for=7200)
    path.write_text("[actions]\nbackoff =\nsuspend =\n")
    assert not load_actions(path).backoff.on
    assert load_actions(tmp_path / "none.ini").backoff == Policy()  # the defaults


@pytest.mark.parametrize("text, fragment", [
    ("backoff = Slow", "'Slow' is not a class"),
    ("backoff_for = soon", "backoff_for cannot read"),
    ("backoff_for = 0", "backoff_for must be longer than 0"),
    ("backoff_floor = 0", "backoff_floor must be a positive integer"),
    ("suspend_after = three", "suspend_after cannot read"),
    ("suspend_after = 3 in ages", "suspend_after cannot read"),
    ("backof = RateLimited", "backof"),
])
def test_a_malformed_backoff_key_is_file_and_line(tmp_path, text, fragment):
    path = tmp_path / "classify.ini"
    path.write_text(f"[actions]\nsuppress = InvalidRecipient\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_actions(path)
    assert "classify.ini:3: " in str(caught.value) and fragment in str(caught.value)


@pytest.fixture(params=["local", "redis"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalBackend(tmp_path / "shaping")
    found = RedisBackend(brokers.url_for("redis"))
    found.client.flushdb()
    return found


def test_the_store_keeps_each_change_and_forgets_what_is_over(store):
    now = 50 * MIN
    policy = Policy(period=60)
    first = store.change_backoff("google.com/default", lambda st: hit(st, now, policy, 10, 100),
                                 lambda st: st.active(now, policy))
    assert store.backoffs() == {"google.com/default": first}
    later = now + 5 * MIN  # the first is over by then: forgotten at the next change
    store.change_backoff("outlook.com/mta1", lambda st: hit(st, later, policy, 4, 40),
                         lambda st: st.active(later, policy))
    assert list(store.backoffs()) == ["outlook.com/mta1"]


def test_changes_made_at_once_from_many_threads_are_all_kept(store):
    """Every host changes the shared state: none may lose another's strike."""
    policy = Policy(suspend_after=1000)

    def strikes(n: int) -> None:
        for i in range(10):
            store.change_backoff("google.com/default", lambda st, at=1000 * n + i: strike(st, at, policy),
                                 lambda st: True)
    threads = [threading.Thread(target=strikes, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.backoffs()["google.com/default"].strikes) == 80


def test_a_backoff_is_enforced_as_a_rule_with_its_limits():
    now = MIN
    st = hit(State(), now, POLICY, conns=6, rate=120)
    rule = backoff.rule("google.com/mta1", st, now, POLICY)
    assert (rule.name, rule.max_connections, rule.messages_per_minute) == \
        ("backoff:google.com/mta1", 3, 60)


def test_a_view_being_read_again_keeps_nobody_waiting_but_the_first_read_does():
    """Every delivery thread asks for the backoffs before each message; while one reads the
    store again the others go on with the last view (they queued on a lock behind the Redis
    round trip until 2026-12-07).  Before the first read there is no view: they wait."""
    reading, release = threading.Event(), threading.Event()
    reads = []

    def read() -> dict[str, State]:
        reads.append(threading.current_thread().name)
        if len(reads) > 1:  # the second read: held until the test lets it go
            reading.set()
            release.wait(30)
        return {"site/default": State(level=len(reads))}

    view = backoff.Backoffs(read)
    first = [view.states() for _ in range(2)]
    assert first[0] == first[1] == {"site/default": State(level=1)} and len(reads) == 1
    view._at -= backoff.REFRESH  # a second later: the view is old
    refresher = threading.Thread(target=view.states, name="refresher")
    refresher.start()
    assert reading.wait(30)
    asked: list[dict[str, State]] = []
    other = threading.Thread(target=lambda: asked.append(view.states()))
    other.start()
    other.join(30)
    still_reading = refresher.is_alive()
    release.set()
    refresher.join(30)
    assert still_reading and asked == [{"site/default": State(level=1)}]
    assert view.states() == {"site/default": State(level=2)} and reads == ["MainThread", "refresher"]
