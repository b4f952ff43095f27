"""Reply classes: 30 real replies get the class their texts mean; classify.ini's rules come
first; mailflow's own replies are classed too; the command says which rule matched."""

from __future__ import annotations

import statistics
import time

import pytest

from mailflow.classify import rules as rules_module
from mailflow.classify.classes import CLASSES
from mailflow.classify.command import parse_reply
from mailflow.classify.rules import DEFAULT_RULES, classify, load, source_of
from mailflow.config.files import ConfigError
from mailflow.errors import local_reply
from tests.support.replies import REPLIES


@pytest.mark.parametrize(("reply", "cls", "source"), REPLIES, ids=[r[0][:30] for r in REPLIES])
def test_real_replies_get_the_class_their_text_means(reply, cls, source):
    assert classify(parse_reply(reply))[0] == cls, source


def test_mailflows_own_replies_are_classed():
    assert classify(local_reply("4.4.3", "DNS lookup of example.com MX failed"))[0] == "DNSFailure"
    assert classify(local_reply("4.4.1", "connection to mx timed out"))[0] == "ConnectionFailure"
    assert classify(local_reply("4.7.5", "TLS handshake with mx failed"))[0] == "TLSRequired"
    assert classify(local_reply("5.1.2", "domain example.invalid does not exist"))[0] == "BadDomain"


def test_the_users_rules_come_first_and_may_name_an_mx(tmp_path):
    path = tmp_path / "classify.ini"
    path.write_text("[rule:our-relay-busy]\nclass = TooManyConnections\ncode = 4xx\ntext = busy\n"
                    "mx = .relay.example\n")
    rules = load(path)
    busy = parse_reply("451 4.7.500 Server busy. Please try again later")
    assert classify(busy, "in.relay.example", rules) == ("TooManyConnections", "our-relay-busy")
    assert classify(busy, "mx.other.example", rules) == ("RateLimited", "microsoft-busy")


@pytest.mark.parametrize(("text", "says"), [
    ("[busy]\nclass = RateLimited\n", "a rule is [rule:NAME]"),
    ("[rule:x]\nclass = Bogus\n", "needs class = one of"),
    ("[rule:x]\nclass = RateLimited\ncode = 42\n", "a reply code"),
    ("[rule:x]\nclass = RateLimited\ntext = (\n", "not a regular expression"),
    ("[rule:x]\nclass = RateLimited\ncolour = red\n", "unknown key"),
])
def test_a_broken_classify_ini_is_one_line(tmp_path, text, says):
    (tmp_path / "classify.ini").write_text(text)
    with pytest.raises(ConfigError, match=re_escape(says)):
        load(tmp_path / "classify.ini")


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_every_shipped_rule_names_a_class_and_the_vocabulary_is_covered():
    assert {r.cls for r in DEFAULT_RULES} <= set(CLASSES)
    assert all(source_of(r) for r in DEFAULT_RULES)  # each shipped rule says where it comes from
    assert len({r.name for r in DEFAULT_RULES}) == len(DEFAULT_RULES)
    covered = {classify(parse_reply(r))[0] for r, _, _ in REPLIES}
    assert covered >= set(CLASSES) - {"TransientFailure", "Uncategorized"} - {"DNSFailure",
                                                                               "ConnectionFailure"}


#: texts beyond the real replies, each meant to hit (or miss) some shipped expression
MORE_TEXTS = ("Mailbox is FULL", "Blocked using zen.SPAMHAUS.org", "sender was rejected as spam",
              "domain example.test not found", "no such mailbox here", "ratelimit exceeded",
              "TSS04 deferred", "s3150 blocked", "nothing any rule knows", "")


@pytest.mark.parametrize("text", [r for r, _, _ in REPLIES] + list(MORE_TEXTS))
def test_the_rules_set_says_what_pythons_re_says_of_every_shipped_expression(text):
    """The shipped expressions are matched by RE2 as a set: the same hits as Python's re."""
    expected = {n for n, rule in enumerate(DEFAULT_RULES) if rule.text is not None
                and rule.text.search(text) is not None}
    assert set(rules_module._SHIPPED.hits(text)) == expected


def test_classifying_is_cheap_enough_to_do_for_every_reply():
    """Printed, not asserted (speed goals are the benchmark's): the median of 30 replies."""
    replies = [parse_reply(r) for r, _, _ in REPLIES]
    times = []
    for reply in replies * 20:
        t = time.perf_counter()
        classify(reply, "mx.example.com")
        times.append(time.perf_counter() - t)
    print(f"classify: median {statistics.median(times) * 1e6:.1f} us per reply")


def test_actions_name_classes_and_schedules(tmp_path):
    from mailflow.classify import actions
    path = tmp_path / "classify.ini"
    path.write_text("[actions]\nsuppress = InvalidRecipient\nbounce_now = PolicyRelated, SpamBlock\n"
                    "retry.QuotaIssues = 1h, 2h, 4h\n")
    found = actions.load(path)
    assert found.suppress == {"InvalidRecipient"} and found.bounce_now == {"PolicyRelated", "SpamBlock"}
    assert found.retry == {"QuotaIssues": [3600, 7200, 14400]}
    assert actions.load(tmp_path / "none.ini") == actions.Actions()  # defaults: suppress both
    for text, says in (("[actions]\nbounce_now = Nope\n", "'Nope' is not a class"),
                       ("[actions]\nretry.Nope = 1h\n", "'Nope' is not a class"),
                       ("[actions]\nretry.QuotaIssues = soon\n", "retry.QuotaIssues"),
                       ("[actions]\ncolour = red\n", "unknown key")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re_escape(says)):
            actions.load(path)


def test_failed_replies_are_counted_by_class_and_destination_for_the_metrics(tmp_path):
    from mailflow import config as configmod
    from mailflow.observation.metrics import HostCollector
    from mailflow.queue import counters
    (tmp_path / "me").write_text("mailflow.test\n")
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    cfg = configmod.load(tmp_path)
    root = cfg.queue_path()
    for cls, destination in (("RateLimited", "mx:.google.com"), ("RateLimited", "mx:.google.com"),
                             ("InvalidRecipient", "other")):
        counters.add_reply(root, cls, destination)
    family = next(f for f in HostCollector(cfg).collect() if f.name == "mailflow_replies")
    found = {(s.labels["class"], s.labels["destination"]): s.value for s in family.samples
             if s.name.endswith("_total")}
    assert found == {("RateLimited", "mx:.google.com"): 2, ("InvalidRecipient", "other"): 1}
