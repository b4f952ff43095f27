"""Outbound TLS on its strict paths: verified delivery by MX name and by IP literal, refusals
with 4.7.x, and no downgrade through a pooled connection (issue 10, items 1 and 3)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme

from mailflow.wire.requiretls import REQUIRETLS_NOTE
from tests.support.pipeline import PORT, ZONES, Env, module_env

TLS_ZONES: dict[str, Any] = {
    **ZONES,
    "named.test": {"MX": [(10, "mx.test")]},  # the certificate names mx.test
    "misnamed.test": {"MX": [(10, "elsewhere.test")]},
    "elsewhere.test": {"A": ["127.0.0.2"]},  # same server, a name its certificate lacks
}


def _with_ca(env: Env, tls_ca: trustme.CA) -> None:
    """The test zones, and the test CA as ca.pem in the config directory."""
    env.dns.set_zones(TLS_ZONES)
    tls_ca.cert_pem.write_to_path(str(env.inst.config_dir / "ca.pem"))


env = module_env("tls", setup=_with_ca, needs=("tls_ca",))


@pytest.fixture
def policy(env: Env):
    """Write tls.ini's [outbound] (with the test CA as `ca`) and enable_tls; reset after."""

    def write(**keys: str) -> None:
        lines = "".join(f"{k} = {v}\n" for k, v in {"ca": "ca.pem", **keys}.items())
        env.inst.write_config("tls.ini", "[outbound]\n" + lines)
        env.configure(enable_tls="true")

    yield write
    env.inst.write_config("tls.ini", "")


def context_from(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def delivered_secured(env: Env, uuid: str) -> bool:
    [seen] = env.wait(lambda: [e for e in env.delivered_log() if e["id"].startswith(uuid)])
    return bool(seen["secured"])


def deferred_with(env: Env, uuid: str) -> dict[str, Any]:
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    [status] = entry.todo.record["rcpt_status"].values()
    return status


STRICT = [{"rejectUnauthorized": "true"}, {"force_tls_hosts": "named.test, 127.0.0.2, mx.test, "
                                                                "misnamed.test, elsewhere.test"}]
STRICT_IDS = ["rejectUnauthorized", "force_tls_hosts"]


@pytest.mark.parametrize("strict", STRICT, ids=STRICT_IDS)
def test_verified_delivery_to_an_mx_named_in_dns(env, mx, policy, mx_tls_context, strict):
    server = mx(tls_context=mx_tls_context)
    policy(**strict)
    uuid = env.send("u@named.test")
    server.wait_for(1)
    assert server.sessions[-1].tls
    assert delivered_secured(env, uuid)


@pytest.mark.parametrize("strict", STRICT, ids=STRICT_IDS)
def test_verified_delivery_to_an_ip_literal_from_get_mx(env, mx, policy, mx_tls_context, strict):
    server = mx(tls_context=mx_tls_context)
    policy(**strict)
    uuid = env.send("u@literal.test", notes={"mx": f"127.0.0.2:{PORT}"})
    server.wait_for(1)
    assert server.sessions[-1].tls
    assert delivered_secured(env, uuid)


@pytest.mark.parametrize("strict", STRICT, ids=STRICT_IDS)
@pytest.mark.parametrize("case", ["other-ca", "other-name", "ip-not-in-certificate"])
def test_untrusted_certificate_defers_with_4_7(env, mx, policy, tls_ca, strict, case):
    if case == "other-ca":
        ctx, to, notes = context_from(trustme.CA(), "mx.test", "127.0.0.2"), "u@named.test", None
    elif case == "other-name":  # elsewhere.test, the MX name in DNS, is not in the certificate
        ctx, to, notes = context_from(tls_ca, "mx.test"), "u@misnamed.test", None
    else:
        ctx, to, notes = (context_from(tls_ca, "mx.test", "127.0.0.3"), "u@literal.test",
                          {"mx": f"127.0.0.2:{PORT}"})
    server = mx(tls_context=ctx)
    policy(**strict)
    uuid = env.send(to, notes=notes)
    status = deferred_with(env, uuid)
    assert status["status"].startswith("4.7."), status
    assert server.deliveries == []
    assert not env.logged("raised unexpected")


def test_a_plaintext_pooled_session_never_carries_mail_that_must_have_tls(env, mx, policy,
                                                                        mx_tls_context):
    server = mx(tls_context=mx_tls_context)
    env.inst.write_config("tls.ini", "[outbound]\nca = ca.pem\nforce_tls_hosts = forced.test\n")
    env.configure(enable_tls="false", pool_timeout=50)
    plain = env.send("u@plain.test", notes={"mx": f"127.0.0.2:{PORT}"})
    server.wait_for(1)
    assert not delivered_secured(env, plain)  # opened without TLS, now idle in the pool
    forced = env.send("u@forced.test", notes={"mx": f"mx.test:{PORT}"})
    server.wait_for(2)
    assert delivered_secured(env, forced)
    [carrier] = [s for s in server.sessions if any(d.rcpt_to == ["u@forced.test"] for d in s.deliveries)]
    assert carrier.tls


def failed_status(env: Env, uuid: str) -> dict[str, Any]:
    """The recipient status of the message's failed entry (before its bounce takes it).

    The attempt line (``failed id=… domain=…``) is written before the per-recipient line
    with its ``status=``: the wait is for the latter."""
    line = env.wait(lambda: next((line for line in env.logs().splitlines()
                                  if f"failed id={uuid}" in line and "status=" in line), ""), 60)
    return {"line": line}


def test_requiretls_goes_over_verified_tls_to_a_next_hop_that_offers_it(env, mx, policy, mx_tls_context):
    """Issue 29 item 4: delivered, and the next hop is asked to keep the requirement."""
    server = mx(tls_context=mx_tls_context, requiretls=True)
    policy(rejectUnauthorized="true")
    uuid = env.send("u@named.test", notes={REQUIRETLS_NOTE: True})
    [seen] = env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == ["u@named.test"]], 60)
    assert "REQUIRETLS" in seen.mail_options and server.sessions[-1].tls
    assert delivered_secured(env, uuid)


@pytest.mark.parametrize("verify, offered", [(False, True), (True, False)],
                         ids=["tls-not-verified", "next-hop-without-requiretls"])
def test_requiretls_bounces_5_7_30_otherwise(env, mx, policy, mx_tls_context, verify, offered):
    server = mx(tls_context=mx_tls_context, requiretls=offered)
    if verify:
        policy(rejectUnauthorized="true")
    else:
        policy()  # STARTTLS taken, the certificate not checked: not enough
    uuid = env.send("u@named.test", notes={REQUIRETLS_NOTE: True})
    line = failed_status(env, uuid)["line"]
    assert "status=5.7.30" in line and "REQUIRETLS" in line
    assert not [d for d in server.deliveries if d.rcpt_to == ["u@named.test"]]
    env.wait(lambda: env.logged(f"bounced id={uuid}"), 60)
