"""Reply classes through the pipeline: a receiver answering 31 real provider replies, each
to a message of its own, and the class each attempt line, queue entry and event carries."""

from __future__ import annotations

import json
import re
import uuid as uuidlib

from tests.support.pipeline import Env, module_env
from tests.support.replies import REPLIES

#: read at start: the worker starts with it
ACTIONS = ("[actions]\nbounce_now = AuthenticationFailed\nretry.QuotaIssues = 3h, 6h\n"
           "backoff =\nsuspend =\n")  # no backoff here: test_backoff.py has its own
env = module_env("classify", files={"classify.ini": ACTIONS})


def _attempt_line(env: Env, uuid: str) -> str:
    found = re.search(rf"(deferred|failed) id={re.escape(uuid)}\.1 .*", env.logs())
    return found.group(0) if found else ""


def _waiting(env: Env, tag: str) -> dict[str, str]:
    """The queue's entries for this test's recipients: recipient -> its last reply class."""
    rows = json.loads(env.inst.mailflow("queue", "list", "--json").stdout)
    return {r["rcpt_to"][0]: r["last_class"] for r in rows if tag in r["rcpt_to"][0]}


def test_each_real_reply_gets_its_class_in_the_attempt_line_and_the_queue(env: Env, mx):
    tag = uuidlib.uuid4().hex[:6]
    rcpts = {f"r{n}-{tag}@dest.test": reply for n, (reply, _, _) in enumerate(REPLIES)}
    mx(rcpt=rcpts)
    sent = {rcpt: env.send(rcpt) for rcpt in rcpts}
    for n, uuid in enumerate(sent.values()):
        line = env.wait(lambda u=uuid: _attempt_line(env, u), 60)
        expected, source = REPLIES[n][1], REPLIES[n][2]
        assert f"class={expected}" in line, (line, source)
    # the temporary ones wait, each with its class; so do full mailboxes however answered,
    # as retry.QuotaIssues gives them a schedule of their own.  The attempt line is written
    # before its entry moves on (to pending/, or to failed/ and its bounce): the queue is
    # looked at until the last ones have
    temporary = {rcpt for n, (rcpt, reply) in enumerate(rcpts.items())
                 if reply.startswith("4") or REPLIES[n][1] == "QuotaIssues"}
    def settled() -> dict[str, str] | None:
        found = _waiting(env, tag)
        return found if set(found) == temporary else None

    waiting = env.wait(settled, 60)
    for n, rcpt in enumerate(rcpts):
        if rcpt in waiting:
            assert waiting[rcpt] == REPLIES[n][1]


def test_classify_command_says_the_class_and_the_rule(env: Env):
    done = env.inst.mailflow("classify", "421 4.7.28 unusual rate of unsolicited mail", "--mx",
                             "gmail-smtp-in.l.google.com")
    assert done.returncode == 0 and done.stdout.decode().strip() == "RateLimited rule=gmail-rate"
    env.inst.write_config("classify.ini", "[rule:ours]\nclass = SpamBlock\ntext = unusual rate\n")
    done = env.inst.mailflow("classify", "421 4.7.28 unusual rate of unsolicited mail")
    assert done.stdout.decode().strip() == "SpamBlock rule=ours"
    env.inst.write_config("classify.ini", ACTIONS)


def test_a_class_has_its_own_retry_schedule_or_none(env: Env, mx):
    tag = uuidlib.uuid4().hex[:6]
    full, unauth = f"full-{tag}@dest.test", f"unauth-{tag}@dest.test"
    over = f"over-{tag}@dest.test"
    server = mx(rcpt={full: "452 4.2.2 Mailbox full", over: "552 5.2.2 mailbox full",
             unauth: "421 4.7.26 Unauthenticated email is not accepted due to domain's DMARC policy"})
    full_id, unauth_id, over_id = env.send(full), env.send(unauth), env.send(over)
    # QuotaIssues: retried on its own schedule, the first wait 3 h (not outbound.ini's first) --
    # a 552 too, which RFC 5321 says to take as temporary
    for uuid in (full_id, over_id):
        [entry] = env.wait(lambda u=uuid: [e for e in env.entries("pending", u) if e.num_failures], 60)
        wait_s = (entry.name.next_attempt_ms - entry.name.arrival_ms) / 1000
        assert 3 * 3600 - 120 <= wait_s <= 3 * 3600 + 120, wait_s
    assert not env.logged(f"bounced id={over_id}")
    # AuthenticationFailed is in bounce_now: failed at once, a bounce made, no retry
    line = env.wait(lambda: _attempt_line(env, unauth_id), 60)
    assert line.startswith("deferred") and "class=AuthenticationFailed" in line
    env.wait(lambda: env.logged(f"bounced id={unauth_id}"), 60)
    assert not env.entries("pending", unauth_id)
    # the bounce says the kind of failure too
    bounce = env.wait(lambda: [d for d in server.deliveries
                               if d.rcpt_to == ["a@sender.test"] and unauth.encode() in d.data], 60)
    assert b"The kind of failure: AuthenticationFailed" in bounce[0].data
