"""Routing without code (issue 24 item 1): routes.ini to two sinks and an LMTP server, a
smarthost with AUTH, each read again while the worker runs; a get_mx answer still wins, and
a route wins over relay_host and DNS."""

from __future__ import annotations

from harness.dnsserver import free_port
from harness.mxserver import MXServer
from tests.support.pipeline import PORT, module_env

env = module_env("routes")


def write_routes(env, text: str) -> None:
    env.inst.write_config("routes.ini", text)
    env.configure()  # a new mtime for outbound.ini too: the worker reads the files again


def test_routes_send_each_domain_to_its_own_next_hop_without_an_mx_lookup(env):
    lmtp_port = free_port("127.0.0.4")
    one, two = MXServer("127.0.0.2", PORT).start(), MXServer("127.0.0.3", PORT).start()
    lmtp = MXServer("127.0.0.4", lmtp_port, lmtp=True).start()
    try:
        # none of these domains exists in the test DNS: only the routes can deliver them
        write_routes(env, f"[one.routed.test]\nvia = 127.0.0.2\n\n"
                          f"[.two.routed.test]\nvia = [127.0.0.3]:{PORT}\n\n"
                          f"[box.routed.test]\nvia = 127.0.0.4:{lmtp_port}\nlmtp = true\n")
        env.send("a@one.routed.test")
        env.send("b@x.two.routed.test")
        env.send(["c@box.routed.test", "d@box.routed.test"])
        [d1] = one.wait_for(1)
        [d2] = two.wait_for(1)
        [d3] = lmtp.wait_for(1)
        assert (d1.rcpt_to, d2.rcpt_to, sorted(d3.rcpt_to)) == (
            ["a@one.routed.test"], ["b@x.two.routed.test"], ["c@box.routed.test", "d@box.routed.test"])
        assert lmtp.sessions[0].ehlo is not None  # LHLO
    finally:
        for server in (one, two, lmtp):
            server.stop()


def test_a_smarthost_with_auth_and_the_order_of_precedence(env, tmp_path):
    smarthost = MXServer("127.0.0.3", PORT, users={"relayuser": "relaypass"}).start()
    direct = MXServer("127.0.0.2", PORT).start()
    try:
        (env.inst.config_dir / "relay.pass").write_text("relaypass\n")
        env.base.update(relay_host=f"[127.0.0.3]:{PORT}", relay_auth_user="relayuser",
                        relay_auth_pass_file="relay.pass")
        write_routes(env, "[mine.routed.test]\nvia = 127.0.0.2\n")
        env.send("a@far.routed.test")  # no route: relay_host (the domain is not in DNS)
        env.send("b@dest.test")  # in DNS, and still the smarthost: it wins over DNS
        env.send("c@mine.routed.test")  # a route wins over relay_host
        env.send("d@plugin.routed.test", notes={"mx": f"127.0.0.2:{PORT}"})  # get_mx wins over both
        relayed = smarthost.wait_for(2)
        assert sorted(r for d in relayed for r in d.rcpt_to) == ["a@far.routed.test", "b@dest.test"]
        assert {s.auth_user for s in smarthost.sessions} == {"relayuser"}
        straight = direct.wait_for(2)
        assert sorted(r for d in straight for r in d.rcpt_to) == ["c@mine.routed.test",
                                                                  "d@plugin.routed.test"]
        assert not env.logged("relaypass")  # the password is never logged
    finally:
        env.base.pop("relay_host"), env.base.pop("relay_auth_user"), env.base.pop("relay_auth_pass_file")
        write_routes(env, "")
        smarthost.stop()
        direct.stop()


def test_a_route_that_requires_tls_never_sends_in_plaintext_and_verify_checks_the_certificate(
        env, mx_tls_context, tls_ca):
    """routes.ini tls = required / verify, on their strict side: no STARTTLS, or a certificate
    from a CA tls.ini does not trust, and the mail waits (4.7.x) instead of going."""
    plain = MXServer("127.0.0.2", PORT).start()  # offers no STARTTLS
    try:
        write_routes(env, "[plain.routed.test]\nvia = 127.0.0.2\ntls = required\n")
        uuid = env.send("a@plain.routed.test")
        assert env.deferral(uuid)["status"].startswith("4.7")
        assert plain.deliveries == []
    finally:
        plain.stop()
    signed = MXServer("127.0.0.2", PORT, tls_context=mx_tls_context).start()  # the test CA's
    try:
        write_routes(env, "[signed.routed.test]\nvia = 127.0.0.2\ntls = verify\n")
        uuid = env.send("b@signed.routed.test")  # tls.ini trusts the system's CAs, not the test CA
        assert env.deferral(uuid)["status"].startswith("4.7")
        assert signed.deliveries == []
        tls_ca.cert_pem.write_to_path(str(env.inst.config_dir / "ca.pem"))  # now tls.ini trusts it
        env.inst.write_config("tls.ini", "[outbound]\nca = ca.pem\n")
        write_routes(env, "[signed.routed.test]\nvia = 127.0.0.2\ntls = verify\n")
        env.send("c@signed.routed.test")
        [delivery] = signed.wait_for(1)
        assert delivery.rcpt_to == ["c@signed.routed.test"] and signed.sessions[-1].tls
    finally:
        env.inst.write_config("tls.ini", "")
        write_routes(env, "")
        signed.stop()
