"""DANE for SMTP (issue 15 item 4): a root zone signed at test time with dnspython, served by
nsd and validated by unbound with the test trust anchor; TLSA records for MX hosts that all
live at one aiosmtpd MX on 127.0.0.2 with a test-CA certificate."""

from __future__ import annotations

import hashlib
import os
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import dnssec
from harness.dnsserver import DNSServer
from tests.support.pipeline import PORT, Env, make_env

MX_NAMES = ["mx.ee.test", "mx.full.test", "mx.wrong.test", "mx.bogus.test", "mx.pkix.test",
            "mx.insecure.test"]


def tlsa_hashes(cert: trustme.LeafCert) -> tuple[str, str]:
    """(SHA-256 of the SPKI, SHA-256 of the whole certificate) of the MX's certificate."""
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest(), hashlib.sha256(leaf.public_bytes(
        serialization.Encoding.DER)).hexdigest()


def domain_records(domain: str, tlsa: str | None) -> list[str]:
    out = [f"{domain}. MX 10 mx.{domain}.", f"mx.{domain}. A 127.0.0.2"]
    if tlsa:
        out.append(f"_{PORT}._tcp.mx.{domain}. TLSA {tlsa}")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tls_ca: trustme.CA):
    missing = dnssec.available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"DANE tests need Debian's nsd and unbound under CI (missing: {missing})")
        pytest.skip(f"DANE tests need Debian's nsd and unbound (missing: {missing}); "
                    "tests/services.sh installs them under CI")
    cert = tls_ca.issue_cert(*MX_NAMES)
    spki, full = tlsa_hashes(cert)
    records = (domain_records("ee.test", f"3 1 1 {spki}") + domain_records("full.test", f"3 0 1 {full}")
               + domain_records("wrong.test", f"3 1 1 {'ab' * 32}")
               + domain_records("bogus.test", f"3 1 1 {spki}")
               + domain_records("pkix.test", f"1 1 1 {spki}"))  # PKIX-EE: unusable for SMTP
    tmp = tmp_path_factory.mktemp("dane")
    dns = dnssec.SignedDNS(tmp / "dns", records,
                           insecure=domain_records("insecure.test", f"3 1 1 {'cd' * 32}")[:2] +
                           [f"_{PORT}._tcp.mx.insecure.test. TLSA 3 1 1 {'cd' * 32}"],
                           bogus=[(f"_{PORT}._tcp.mx.bogus.test.", "TLSA")]).start()
    e, inst = make_env(tmp / "mf", None, base={"nameservers": dns.resolver, "enable_tls": "true"})
    inst.write_config("tls.ini", f"[outbound]\ndane = true\ndane_resolver = {dns.resolver}\n")
    e.configure()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    e.mx_context = ctx  # type: ignore[attr-defined]
    e.signed = dns  # type: ignore[attr-defined]
    yield e
    inst.stop_all()
    e.dns.stop()
    dns.stop()


@pytest.fixture
def env(world: Env) -> Env:
    return world


@pytest.mark.parametrize("domain", ["ee.test", "full.test"])
def test_a_matching_dane_ee_record_delivers_at_level_dane(env, mx, domain):
    server = mx(tls_context=env.mx_context)
    uuid = env.send(f"u@{domain}")
    seen = env.delivered_record(uuid)
    assert seen["tls_level"] == "dane" and seen["secured"]
    assert server.sessions[-1].tls
    assert env.logged(f"delivered id={uuid}.1 domain={domain}")
    assert env.logged("tls=Y tlslevel=dane")


def test_a_mismatched_tlsa_record_defers_and_sends_nothing(env, mx):
    server = mx(tls_context=env.mx_context)
    uuid = env.send("u@wrong.test")
    status = env.deferral(uuid)
    assert status["status"] == "4.7.5" and "TLSA" in str(status), status
    assert all(s.deliveries == [] for s in server.sessions)


def test_a_bogus_tlsa_answer_defers_without_connecting(env, mx):
    server = mx(tls_context=env.mx_context)
    uuid = env.send("u@bogus.test")
    status = env.deferral(uuid)
    assert status["status"] == "4.7.5" and "DNSSEC" in str(status), status
    assert server.sessions == []


def test_an_unsigned_zone_is_delivered_as_without_dane(env, mx):
    mx(tls_context=env.mx_context)
    uuid = env.send("u@insecure.test")
    seen = env.delivered_record(uuid)
    assert seen["tls_level"] == "opportunistic"  # enable_tls: STARTTLS, not verified


def test_only_unusable_records_mean_tls_required_but_not_authenticated(env, mx):
    env.configure(pool_timeout=0)  # a new connection for each message
    server = mx(tls_context=env.mx_context)
    assert env.delivered_record(env.send("u@pkix.test"))["tls_level"] == "opportunistic"
    server.tls_context = None  # no STARTTLS offered from now on: DANE says TLS is required
    uuid = env.send("u@pkix.test")
    status = env.deferral(uuid)
    assert status["status"] == "4.7.5" and "DANE" in str(status), status
    assert len(server.deliveries) == 1


def test_the_worker_says_whether_the_resolver_validates(env, make_instance):
    plain = DNSServer().start()  # answers, but never with the AD bit
    try:
        for name, resolver, says in [("validating", env.signed.resolver, "validates DNSSEC"),
                                     ("plain", plain.address, "does not validate DNSSEC")]:
            inst = make_instance(name=name)
            inst.write_config("tls.ini", f"[outbound]\ndane = true\ndane_resolver = {resolver}\n")
            worker = inst.start_worker(name)
            assert f"DANE: the resolver {resolver} {says}" in worker.output()
            worker.stop()
    finally:
        plain.stop()


def test_dane_without_a_resolver_is_a_config_error(make_instance):
    inst = make_instance()
    inst.write_config("tls.ini", "[outbound]\n; DANE\ndane = true\n")
    done = inst.mailflow("queue", "stats")
    assert done.returncode != 0
    assert f"{inst.config_dir / 'tls.ini'}:3: dane = true needs dane_resolver" in done.stderr.decode()
