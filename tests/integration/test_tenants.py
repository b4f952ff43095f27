"""Tenants and campaigns: a message's tenant is its AUTH user's (tenants.ini), its API key's,
or the X-Tenant header of a client that may relay without AUTH; X-Tenant and X-Campaign
never travel on; both are in the queued and attempt lines and in `queue list/stats`."""

from __future__ import annotations

import base64
import json
import smtplib
import urllib.request
import uuid as uuidlib

from harness.dnsserver import free_port
from harness.waiting import until
from tests.support.pipeline import Env, module_env, write_due

USERS = "[core]\nmethods = PLAIN,LOGIN\n[users]\nalice = s3cret\nbob = hunter22\n"
TENANTS = "[tenant:acme]\nusers = alice\n\n[tenant:globex]\n"


def _setup(env: Env) -> None:
    port, http = free_port(), free_port()
    env.inst.write_config("smtp.ini", f"listen = 127.0.0.1:{port}\n")
    env.inst.write_config("auth_flat_file.ini", USERS)
    env.inst.write_config("relay_acl_allow", "127.0.0.1\n")
    env.inst.write_config("tenants.ini", TENANTS)
    env.inst.write_config("http.ini", f"listen = 127.0.0.1:{http}\n")
    made = env.inst.mailflow("apikey", "add", "globex-app", "--tenant", "globex")
    assert made.returncode == 0, made.stderr
    env.api_key = made.stdout.decode().strip()  # type: ignore[attr-defined]
    env.smtp_port, env.http_port = port, http  # type: ignore[attr-defined]
    env.inst.start_smtpd()


#: shaping.ini is read at start: the worker starts with it
SHAPING = "[tenant:slowco]\nmessages_per_minute = 5\n"
env = module_env("tenants", setup=_setup, files={"shaping.ini": SHAPING})


def smtp_send(env: Env, rcpt: str, headers: str, user: str | None = None, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10,  # type: ignore[attr-defined]
                      source_address=(source, 0)) as s:
        s.ehlo("client.test")
        if user:
            s.login(user, {"alice": "s3cret", "bob": "hunter22"}[user])
        s.sendmail("a@sender.test", [rcpt], f"{headers}Subject: t\r\n\r\nhello\r\n")


def line_for(env: Env, kind: str, rcpt_tag: str) -> str:
    return next((line for line in env.logs().splitlines() if f"{kind} " in line and rcpt_tag in line), "")


def test_the_tenant_comes_from_the_auth_user_or_a_trusted_clients_header_and_never_travels(env, mx):
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    cases = {  # recipient -> (how it was sent, the tenant and campaign it must carry)
        f"auth-{tag}@dest.test": ({"user": "alice", "headers": "X-Tenant: globex\r\n"}, "acme", None),
        f"acl-{tag}@dest.test": ({"headers": "X-Tenant: globex\r\nX-Campaign: spring-sale\r\n"},
                                 "globex", "spring-sale"),
        f"plain-{tag}@dest.test": ({"user": "bob", "headers": "X-Tenant: acme\r\n"}, None, None),
        f"bad-{tag}@dest.test": ({"headers": "X-Tenant: not/a name\r\n"}, None, None),
    }
    for rcpt, (how, _, _) in cases.items():
        smtp_send(env, rcpt, **how)
    until(lambda: all(any(rcpt in d.rcpt_to for d in server.deliveries) for rcpt in cases), 60)
    for rcpt, (_, tenant, campaign) in cases.items():
        [delivery] = [d for d in server.deliveries if rcpt in d.rcpt_to]
        head = delivery.data.split(b"\r\n\r\n")[0].lower()
        assert b"x-tenant" not in head and b"x-campaign" not in head  # taken, not sent on
        queued_id = next(line for line in env.logs().splitlines()
                         if "queued id=" in line and rcpt in line).split("id=")[1].split()[0]
        delivered = env.wait(lambda qid=queued_id: next(
            (ln for ln in env.logs().splitlines()
             if ln.split("delivered ", 1)[-1].startswith(f"id={qid}")), ""))
        for line in (line_for(env, "queued", rcpt), delivered):
            assert (f"tenant={tenant}" in line) == bool(tenant), line
            assert (f"campaign={campaign}" in line) == bool(campaign), line


def test_the_api_keys_tenant_and_queue_list_and_stats_by_tenant(env):
    # no MX answers here: the mail waits in the queue, deferred
    tag = uuidlib.uuid4().hex[:8]
    request = urllib.request.Request(
        f"http://127.0.0.1:{env.http_port}/api/v1/send/raw",  # type: ignore[attr-defined]
        data=json.dumps({"mail_from": "a@sender.test", "rcpt_to": [f"api-{tag}@dest.test"],
                         "data": base64.b64encode(b"Subject: x\r\n\r\nx\r\n").decode()}).encode(),
        headers={"Authorization": f"Bearer {env.api_key}"})  # type: ignore[attr-defined]
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    smtp_send(env, f"acl-{tag}@dest.test", "X-Tenant: acme\r\n")
    assert "tenant=globex" in env.wait(lambda: line_for(env, "queued", f"api-{tag}"))

    def listed(tenant: str) -> list[dict]:
        done = env.inst.mailflow("queue", "list", "--json", "--tenant", tenant)
        assert done.returncode == 0, done.stderr
        return [r for r in json.loads(done.stdout) if tag in r["rcpt_to"][0]]

    globex = env.wait(lambda: listed("globex"))
    assert [r["rcpt_to"] for r in globex] == [[f"api-{tag}@dest.test"]] and globex[0]["tenant"] == "globex"
    assert [r["rcpt_to"] for r in listed("acme")] == [[f"acl-{tag}@dest.test"]]
    stats = json.loads(env.inst.mailflow("queue", "stats", "--json", "--tenant", "globex").stdout)
    assert stats["tenant"] == "globex" and stats["queued"] + stats["in_progress"] + stats["waiting"] >= 1
    text = env.inst.mailflow("queue", "list", "--tenant", "acme").stdout.decode()
    assert f"acl-{tag}@dest.test" in text and "tenant=acme" in text


def test_a_tenants_shaping_rule_holds_its_mail_whatever_the_destination(env, mx):
    server = mx()
    write_due(env.inst.queue_dir / "pending", 12, "sender.test", {"tenant": "slowco"})
    write_due(env.inst.queue_dir / "pending", 12, "dest.test", {"tenant": "fastco"})
    until(lambda: sum(1 for d in server.deliveries if d.rcpt_to[0].endswith("@dest.test")) >= 12, 60)

    def held() -> list[dict]:
        rows = json.loads(env.inst.mailflow("queue", "list", "--json", "--tenant", "slowco").stdout)
        return [r for r in rows if r["held"] == "shaping:tenant:slowco"]

    assert env.wait(lambda: len(held()) >= 7)  # 5 a minute went; the rest wait, not failed
    assert all(r["num_failures"] == 0 for r in held())
    assert sum(1 for d in server.deliveries if d.rcpt_to[0].endswith("@sender.test")) <= 5
