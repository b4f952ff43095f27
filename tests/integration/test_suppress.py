"""The suppression list (issue 16 item 3): a 5.1.x refusal adds the recipient, shared by every
host on a Redis broker (in the state directory on the embedded one); mail to it is refused at
RCPT and by send_email until `mailflow suppress remove`."""

from __future__ import annotations

import json
import smtplib
import uuid as uuidlib

from harness import brokers
from harness.waiting import until
from tests.support.pipeline import Env, module_env, with_listener

BROKER_NAMES = ["embedded", "redis"]


env = module_env("suppress", brokers_=BROKER_NAMES, setup=with_listener)


def rcpt(env: Env, address: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10) as s:  # type: ignore[attr-defined]
        s.ehlo("client.test")
        s.mail("a@sender.test")
        code, text = s.rcpt(address)
        return code, text.decode()


def submit(env: Env, address: str) -> None:
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10) as s:  # type: ignore[attr-defined]
        s.sendmail("a@sender.test", [address], f"Subject: {uuidlib.uuid4().hex}\r\n\r\nhello\r\n")


def listed(env: Env) -> dict[str, dict]:
    done = env.inst.mailflow("suppress", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {e["address"]: e for e in json.loads(done.stdout)}


def failed_for(env: Env, address: str) -> None:
    """Until the worker logged the recipient's permanent failure."""
    env.wait(lambda: env.logged(f"rcpt={address} status="))


def test_an_unknown_recipient_suppresses_and_a_policy_refusal_does_not(env, mx):
    tag = uuidlib.uuid4().hex[:8]
    gone, policy, bare = f"gone-{tag}@dest.test", f"policy-{tag}@dest.test", f"bare-{tag}@dest.test"
    mx(rcpt={gone: "550 5.1.1 no such user", policy: "550 5.7.1 refused by policy",
             bare: "550 no such user here"})
    for address in (gone, policy, bare):
        assert rcpt(env, address)[0] == 250
        submit(env, address)
    for address in (gone, policy, bare):
        failed_for(env, address)
    found = listed(env)
    assert gone in found and "5.1.1" in found[gone]["reason"]
    assert policy not in found
    assert bare in found  # no status, but its text says the user is unknown: InvalidRecipient
    assert env.logged(f"suppressed rcpt={gone}")

    # the listener asks Redis whether the list is empty at most once a second: the entry the
    # worker added counts within that second, not necessarily at once
    code, text = until(lambda: (found := rcpt(env, gone))[0] != 250 and found, 10)
    assert (code, text[:5]) == (550, "5.7.1") and "suppression list" in text
    assert rcpt(env, policy)[0] == 250
    sent = env.inst.mailflow("send", "-f", "a@sender.test", gone, input=b"Subject: x\n\nx\n")
    assert sent.returncode == 1 and "suppression list" in sent.stderr.decode()
    assert env.logged(f"refused rcpt={gone} client=127.0.0.1 reason=\"suppressed\"")

    removed = env.inst.mailflow("suppress", "remove", gone)
    assert removed.returncode == 0, removed.stderr
    assert rcpt(env, gone)[0] == 250  # mailed again


def test_mailflows_own_dns_conclusions_bounce_but_never_suppress(env, mx):
    """Suppression follows the receiver's word only: at 7ff0849 an NXDOMAIN (which a broken
    resolver answers for everything) put the recipient on the list (issue 24 item 3)."""
    tag = uuidlib.uuid4().hex[:8]
    mx()
    nxdomain, servfail = f"u-{tag}@nowhere-{tag}.test", f"u-{tag}@broken.test"
    submit(env, nxdomain)
    submit(env, servfail)
    failed_for(env, nxdomain)
    env.wait(lambda: any("bounced id=" in line and "status=5.1.2" in line  # failed, then bounced
                         for p in env.inst.procs for line in p.output().splitlines()))
    env.wait(lambda: env.logged("deferred id=") and env.logged("domain=broken.test"))
    found = listed(env)
    assert nxdomain not in found and servfail not in found
    assert rcpt(env, nxdomain)[0] == 250  # mailed again when the domain comes back


def test_add_list_import_by_hand(env, tmp_path):
    tag = uuidlib.uuid4().hex[:8]
    added = env.inst.mailflow("suppress", "add", f"Hand-{tag}@Dest.test", "--reason", "asked to stop")
    assert added.returncode == 0, added.stderr
    entry = listed(env)[f"hand-{tag}@dest.test"]  # kept in lower case
    assert entry["reason"] == "asked to stop" and entry["since"] > 0
    assert rcpt(env, f"hand-{tag}@dest.test")[0] == 550

    bad = tmp_path / "bad.txt"
    bad.write_text(f"# unsubscribed\nok-{tag}@dest.test\nnot an address\n")
    done = env.inst.mailflow("suppress", "import", str(bad))
    assert done.returncode == 1 and f"{bad}:3:" in done.stderr.decode()
    assert f"ok-{tag}@dest.test" not in listed(env)  # nothing of a bad file

    good = tmp_path / "good.txt"
    good.write_text(f"ok-{tag}@dest.test,complained\nalso-{tag}@dest.test\n")
    done = env.inst.mailflow("suppress", "import", str(good))
    assert done.returncode == 0 and b"2 addresses suppressed" in done.stdout
    found = listed(env)
    assert found[f"ok-{tag}@dest.test"]["reason"] == "complained"
    assert found[f"also-{tag}@dest.test"]["reason"] == "imported from good.txt"

    missing = env.inst.mailflow("suppress", "remove", f"never-{tag}@dest.test")
    assert missing.returncode == 1


def test_every_host_on_a_redis_broker_shares_the_list(make_instance):
    """Two hosts (two config and state directories) on one Redis broker: one list."""
    url = brokers.url_for("redis")
    tag = uuidlib.uuid4().hex[:8]
    one = make_instance(broker_url=url, name="onehost")
    other = make_instance(broker_url=url, name="otherhost")
    assert one.mailflow("suppress", "add", f"shared-{tag}@dest.test").returncode == 0
    done = other.mailflow("suppress", "list", "--json")
    assert f"shared-{tag}@dest.test" in {e["address"] for e in json.loads(done.stdout)}
    assert other.mailflow("suppress", "remove", f"shared-{tag}@dest.test").returncode == 0
    after = one.mailflow("suppress", "list", "--json")
    assert f"shared-{tag}@dest.test" not in {e["address"] for e in json.loads(after.stdout)}
