"""routes.ini and relay_host (mailflow/config/routes.py; issue 24 item 1): parsed and checked
FILE:LINE, the most specific route wins."""

from __future__ import annotations

import pytest

from mailflow import config as configmod
from mailflow.config import routes
from mailflow.config.files import ConfigError

ROUTES = """\
[example.com]
via = 127.0.0.2:2525

[.example.org]
via = [127.0.0.3]:2526, backup.example.net
lmtp = true
tls = verify

[*]
via = smarthost.example.net:587
auth_user = app
auth_pass_file = secret/pass
bind = 127.0.0.1
bind_helo = out.example.com
"""


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "routes.ini").write_text(ROUTES)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "pass").write_text("s3cret\nignored\n")
    return configmod.Config(tmp_path)


def test_the_most_specific_route_wins(cfg):
    assert cfg.route_for("example.com").via == (("127.0.0.2", 2525),)
    sub = cfg.route_for("mx.sub.example.org")
    assert sub.via == (("127.0.0.3", 2526), ("backup.example.net", None)) and sub.lmtp and sub.tls == "verify"
    assert cfg.route_for("example.org").pattern == "*"  # a .suffix is for subdomains only
    star = cfg.route_for("anything.test")
    assert (star.auth_user, star.auth_pass, star.bind, star.bind_helo) == ("app", "s3cret", "127.0.0.1",
                                                                         "out.example.com")
    assert "s3cret" not in repr(star)  # never logged


def test_a_route_is_a_get_mx_answer_in_order(cfg):
    answer = cfg.route_for("a.example.org").answer()
    assert [(m["exchange"], m["port"], m["priority"], m["using_lmtp"], m["tls"]) for m in answer] == [
        ("127.0.0.3", 2526, 0, True, "verify"), ("backup.example.net", None, 1, True, "verify")]


def test_relay_host_is_the_last_resort(tmp_path):
    (tmp_path / "outbound.ini").write_text("relay_host = [127.0.0.9]:2525\nrelay_auth_user = u\n"
                                           "relay_auth_pass_file = /nonexistent\n")
    with pytest.raises(ConfigError, match=r"outbound.ini:3: relay_auth_pass_file '/nonexistent': cannot"):
        configmod.Config(tmp_path)
    (tmp_path / "pass").write_text("pw\n")
    (tmp_path / "outbound.ini").write_text("relay_host = [127.0.0.9]:2525\nrelay_auth_user = u\n"
                                           "relay_auth_pass_file = pass\n")
    (tmp_path / "routes.ini").write_text("[example.com]\nvia = 127.0.0.2\n")
    cfg = configmod.Config(tmp_path)
    assert cfg.route_for("example.com").via == (("127.0.0.2", None),)
    relay = cfg.route_for("other.test")
    assert relay.via == (("127.0.0.9", 2525),) and (relay.auth_user, relay.auth_pass) == ("u", "pw")
    (tmp_path / "routes.ini").unlink()
    (tmp_path / "outbound.ini").write_text("")
    assert configmod.Config(tmp_path).route_for("other.test") is None  # DNS


@pytest.mark.parametrize("text,error", [
    ("[example.com]\nvia = a b\n", "routes.ini:2: via 'a b' is not host[:port]"),
    ("[example.com]\nlmtp = true\n", "routes.ini:1: via is missing"),
    ("[example.com]\npool = p\nauth_user = u\nauth_pass_file = /etc/hostname\ntls = none\n",
     "routes.ini:1: auth_pass_file, auth_user, tls need via: a section without it only picks"),
    ("[example.com]\nvia = x\ntls = strict\n", "routes.ini:3: tls must be one of none, opportunistic"),
    ("[example.com]\nvia = x\nvai = y\n", "routes.ini:3: unknown key 'vai' (did you mean 'via'?)"),
    ("[example.com]\nvia = x\nauth_user = u\n", "routes.ini:1: auth_user and auth_pass_file go together"),
    ("[example.com]\nvia = x\nbind = nowhere\n", "routes.ini:3: bind must be an IP address"),
    ("via = x\n", "routes.ini:1: a key before any section"),
    ("[exa mple.com]\nvia = x\n", "routes.ini:1: [exa mple.com] is not a domain"),
    ("[example.com]\nvia = x:99999\n", "routes.ini:2: via 'x:99999': port out of range"),
])
def test_a_broken_routes_ini_is_file_line(tmp_path, text, error):
    (tmp_path / "routes.ini").write_text(text)
    with pytest.raises(ConfigError) as exc:
        configmod.Config(tmp_path)
    assert error in str(exc.value)


def test_routes_ini_is_read_again_when_it_changes(tmp_path, monkeypatch):
    (tmp_path / "routes.ini").write_text("[example.com]\nvia = 127.0.0.2\n")
    cfg = configmod.Config(tmp_path)
    assert cfg.route_for("example.com").via[0][0] == "127.0.0.2"
    (tmp_path / "routes.ini").write_text("[example.com]\nvia = 127.0.0.3\n# longer now\n")
    monkeypatch.setattr(cfg, "_checked", -1e9)
    assert cfg.route_for("example.com").via[0][0] == "127.0.0.3"


def test_find_prefers_exact_then_longest_suffix_then_star():
    made = (routes.Route("*", (("s", None),)), routes.Route(".b.c", (("x", None),)),
            routes.Route(".a.b.c", (("y", None),)), routes.Route("a.b.c", (("z", None),)))
    assert [routes.find(made, d).via[0][0] for d in ("a.b.c", "q.a.b.c", "q.b.c", "b.c", "z")] == \
        ["z", "y", "x", "s", "s"]


def test_a_section_with_only_a_pool_picks_the_pool_and_leaves_the_way(tmp_path):
    """``pool`` without ``via``: the mail leaves from that pool and goes where it would have
    gone without the section -- relay_host here, DNS when there is none."""
    (tmp_path / "egress.ini").write_text("[source:s1]\naddress = 127.0.0.4\nehlo = s1.test\n\n"
                                         "[pool:bulk]\nsources = s1\n")
    (tmp_path / "routes.ini").write_text("[.example.com]\npool = bulk\n\n[a.example.com]\n"
                                         "via = 127.0.0.2\n")
    (tmp_path / "outbound.ini").write_text("relay_host = [127.0.0.9]:2525\n")
    cfg = configmod.Config(tmp_path)
    assert cfg.route_for("b.example.com").via == (("127.0.0.9", 2525),)  # relay_host, not DNS
    assert cfg.route_pool("b.example.com") == "bulk"
    assert cfg.route_for("a.example.com").via == (("127.0.0.2", None),)  # its own way, the pool kept
    assert cfg.route_pool("a.example.com") == "bulk" and cfg.route_pool("other.test") is None
    (tmp_path / "outbound.ini").write_text("")
    assert configmod.Config(tmp_path).route_for("b.example.com") is None  # DNS
