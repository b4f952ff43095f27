"""Who may relay by address (smtpd/acl.py): the ACL's networks, IPv4-mapped clients as IPv4."""

from __future__ import annotations

import ipaddress

import pytest

from mailflow.smtpd.acl import client_ip, ip_allowed

ACL = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")]


@pytest.mark.parametrize(("client", "allowed"), [
    ("192.0.2.7", True), ("192.0.3.7", False),
    ("::ffff:192.0.2.7", True),  # a dual-stack listener's IPv4 client
    ("::ffff:192.0.3.7", False),
    ("2001:db8::5", True), ("fe80::1%eth0", False), ("2001:db8::5%eth0", True),
    ("", False), ("not-an-address", False), ("192.0.2.300", False),
])
def test_a_client_relays_by_address_only_inside_the_acl(client, allowed):
    assert ip_allowed(client, ACL) is allowed
    assert ip_allowed(client, ACL) is allowed  # and the same once its address is known


def test_an_empty_acl_allows_no_one():
    assert not ip_allowed("192.0.2.7", [])


def test_a_mapped_client_is_compared_as_ipv4_and_none_is_no_address():
    assert client_ip("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert client_ip("unix-socket") is None
