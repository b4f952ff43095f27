"""The outbound TLS policy of tls.ini [outbound]: which hosts, what is required (relay/tlspolicy.py)."""

from __future__ import annotations

import ssl

import pytest

from mailflow.config.settings import Outbound, Tls
from mailflow.relay.mx import MX, Target
from mailflow.relay.tlsneed import tls_need
from mailflow.relay.tlspolicy import client_context, forced, names_domain, no_tls


@pytest.mark.parametrize("pattern,ip,mx,domain,hit", [
    ("192.0.2.7", "192.0.2.7", "mx.example", "example.net", True),
    ("192.0.2.0/24", "192.0.2.99", "mx.example", "example.net", True),
    ("192.0.2.0/24", "198.51.100.1", "mx.example", "example.net", False),
    ("example.net", "192.0.2.7", "mx.example", "example.net", True),  # the recipient domain
    ("mx.example", "192.0.2.7", "mx.example", "other.net", True),  # the MX name
    ("example", "192.0.2.7", "mx.example", "other.net", True),  # a parent domain of the MX
    ("*.example", "192.0.2.7", "mx.example", "other.net", True),
    ("ample", "192.0.2.7", "mx.example", "other.net", False),  # not a label boundary
])
def test_host_patterns(pattern, ip, mx, domain, hit):
    policy = Tls(force_tls_hosts=(pattern,), no_tls_hosts=(pattern,))
    assert forced(policy, ip, mx, domain) is hit
    assert no_tls(policy, ip, mx, domain) is hit


@pytest.mark.parametrize("patterns,domain,named", [
    (("example.net",), "example.net", True),
    (("net",), "example.net", True),  # a parent of the domain
    (("192.0.2.0/24", "mx.example"), "example.net", False),  # addresses and MX names do not
    ((), "example.net", False),
])
def test_a_domain_named_by_tls_ini_needs_what_others_on_its_mx_hosts_may_not(patterns, domain, named):
    """Such a domain's mail never shares a route with other domains' (mailflow/pipeline/lookup.py)."""
    assert names_domain(Tls(force_tls_hosts=patterns), domain) is named
    assert names_domain(Tls(no_tls_hosts=patterns), domain) is named


def target(exchange: str = "mx.example") -> Target:
    return Target(mx=MX(exchange=exchange), ip="192.0.2.7", port=25)


@pytest.mark.parametrize("policy,enable,want,must,verify", [
    (Tls(), False, False, False, False),
    (Tls(), True, True, False, False),
    (Tls(rejectUnauthorized=True), True, True, False, True),
    (Tls(force_tls_hosts=("example.net",)), False, True, True, True),  # whatever enable_tls says
    (Tls(no_tls_hosts=("mx.example",)), True, False, False, False),
])
def test_what_a_delivery_needs(policy, enable, want, must, verify):
    need = tls_need(target(), "example.net", policy, Outbound(enable_tls=enable))
    assert (need.want, need.must, need.verify, need.name) == (want, must, verify, "mx.example")


def test_client_contexts_verify_only_when_asked():
    strict, lenient = client_context(Tls(), True), client_context(Tls(), False)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert lenient.verify_mode == ssl.CERT_NONE and not lenient.check_hostname
    assert client_context(Tls(), True) is strict  # built once per policy
