import pytest

from mailflow.address import Address, AddressError, parse_address


@pytest.mark.parametrize("text,user,host", [
    ("user@example.com", "user", "example.com"),
    ("<user@Example.COM>", "user", "example.com"),
    ('"john doe"@example.com', '"john doe"', "example.com"),
    ("a.b+tag@sub.example.org", "a.b+tag", "sub.example.org"),
    ("user@[127.0.0.1]", "user", "[127.0.0.1]"),
    ("user@[IPv6:::1]", "user", "[ipv6:::1]"),
    ("user%other@example.com", "user%other", "example.com"),
    ("bang!path@example.com", "bang!path", "example.com"),
    ("jörg@bücher.example", "jörg", "bücher.example"),
])
def test_valid_addresses(text, user, host):
    addr = parse_address(text)
    assert (addr.user, addr.host) == (user, host)
    assert str(addr) == f"<{user}@{host}>"


@pytest.mark.parametrize("text", [
    "", "<>", "user", "@example.com", "user@", "user@@example.com", "us er@example.com",
    "<@relay.example:user@example.com>", "@a,@b:user@c.example", "user@exa mple.com",
    "user@-bad.example", "user@example..com", "a" * 65 + "@example.com", "<user@example.com",
    "user@example.com\r\nRCPT TO:<x@y.z>", "user@[300.1.1.1]", ".user@example.com",
])
def test_invalid_addresses(text):
    with pytest.raises(AddressError):
        parse_address(text)


def test_quoted_at_is_local_part_only():
    # the domain is what follows the last @: a quoted @ never routes elsewhere
    addr = parse_address('"victim@other.example"@example.com')
    assert addr.host == "example.com"


def test_null_sender():
    assert parse_address("<>", allow_null=True) == Address.null()
    assert parse_address("", allow_null=True).address == ""
    assert str(Address.null()) == "<>"


def test_json_round_trip():
    a = parse_address("x@y.example")
    assert Address.from_json(a.to_json()) == a
