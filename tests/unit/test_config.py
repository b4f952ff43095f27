"""The config directory: every file parsed and validated; the shipped one in step with defaults."""

import dataclasses
import os
import re
import time
from pathlib import Path

import pytest

from mailflow import config as configmod
from mailflow.config import startup
from mailflow.config.files import ConfigError, read_ini
from mailflow.config.settings import Dkim, Metrics, Outbound, Shared, Smtp, defaults_of, parsers_of

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config"

#: keys the shipped config sets on purpose to something other than the default
SHIPPED_OVERRIDES = {"enable_tls": True}


def test_shipped_config_loads():
    cfg = configmod.Config(SHIPPED)
    assert cfg.outbound.enable_tls is True
    assert cfg.smtp.listen == (("127.0.0.1", 2525),)
    assert cfg.auth.methods == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert any(str(n) == "127.0.0.1/32" for n in cfg.relay_acl)
    assert "{reason}" in cfg.bounce_template


def _commented_defaults(path: Path) -> dict[str, str]:
    """``; key = value`` lines: the defaults the shipped file documents."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^[;#]\s*([a-z0-9_]+)\s*=\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


@pytest.mark.parametrize("cls,filename", [(Outbound, "outbound.ini"), (Smtp, "smtp.ini"),
                                               (Dkim, "dkim.ini"), (Shared, "shaping.ini"),
                                               (Metrics, "metrics.ini")])
def test_shipped_file_documents_every_key_with_its_real_default(cls, filename):
    path = SHIPPED / filename
    documented = _commented_defaults(path)
    active = {k: v.text for k, v in read_ini(path).section("main").items()}
    parsers, defaults = parsers_of(cls), defaults_of(cls)
    for key, default in defaults.items():
        assert key in documented or key in active, f"{filename} does not mention {key}"
        if key in active:
            assert parsers[key](active[key]) == SHIPPED_OVERRIDES[key], key
            continue
        text = documented[key]
        if default in (None, ()) and text == "":
            continue
        assert parsers[key](text) == default, f"{filename}: {key} documents {text!r}, default {default!r}"
    for key in list(documented) + list(active):
        assert key in defaults, f"{filename} mentions unknown key {key}"


def test_missing_directory_gives_every_default(tmp_path):
    cfg = configmod.Config(tmp_path)
    assert dataclasses.asdict(cfg.outbound) == dataclasses.asdict(Outbound())
    assert cfg.me  # the machine's FQDN


@pytest.mark.parametrize("filename,text,line,fragment", [
    ("outbound.ini", "enable_tls = true\n\nconcurrency_max = -3\n", 3,
     "concurrency_max must be a positive integer"),
    ("outbound.ini", "temp_fail_intervals = 1m, 2s\n", 1, "under the 5 s minimum"),
    ("outbound.ini", "disabled = perhaps\n", 1, "disabled must be true/false"),
    ("outbound.ini", "[main\n", 1, "malformed section"),
    ("outbound.ini", "nameservers = dns.example\n", 1, "nameservers"),
    ("smtp.ini", "listen = 127.0.0.1\n", 1, "listen"),
    ("smtp.ini", "max_message_size = lots\n", 1, "max_message_size"),
    ("tls.ini", "[outbound]\nno_tls_hosts = a b\n", 2, "no_tls_hosts"),
    ("tls.ini", "minVersion = SSLv3\n", 1, "minVersion"),
    ("relay_acl_allow", "127.0.0.1\nnot-an-ip\n", 2, "not an IP address"),
    ("auth_flat_file.ini", "[core]\nmethods = PLAIN,NTLM\n", 2, "methods"),
    ("plugins", "good_module\nbad module\n", 2, "not an importable module"),
    ("outbound.bounce_message", "From: x\nno colon here\n\nbody\n", 2, "header line"),
])
def test_errors_name_file_and_line(tmp_path, filename, text, line, fragment):
    (tmp_path / filename).write_text(text)
    with pytest.raises(ConfigError) as exc:
        configmod.Config(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / filename}:{line}: ")
    assert fragment in str(exc.value)


def test_tls_outbound_inherits_main(tmp_path):
    (tmp_path / "tls.ini").write_text(
        "[main]\nciphers = HIGH\nrejectUnauthorized = true\n[outbound]\nrejectUnauthorized = false\n"
        "force_tls_hosts = mx.bank.example, 192.0.2.0/24\n")
    cfg = configmod.Config(tmp_path)
    assert cfg.tls_main.rejectUnauthorized is True
    assert cfg.tls_outbound.ciphers == "HIGH"
    assert cfg.tls_outbound.rejectUnauthorized is False
    assert cfg.tls_outbound.force_tls_hosts == ("mx.bank.example", "192.0.2.0/24")
    assert cfg.tls_main.cert == str(tmp_path / "tls_cert.pem")


def test_haraka_explicit_main_and_list_syntax(tmp_path):
    (tmp_path / "outbound.ini").write_text("[main]\nnameservers[] = 127.0.0.1:5353\n"
                                           "nameservers[] = ::1\n")
    cfg = configmod.Config(tmp_path)
    assert cfg.outbound.nameservers == (("127.0.0.1", 5353), ("::1", 53))


def test_outbound_ini_is_reread_live(tmp_path, monkeypatch):
    monkeypatch.setattr("mailflow.config.loader.RELOAD_CHECK_INTERVAL", 0.0)
    path = tmp_path / "outbound.ini"
    path.write_text("disabled = false\n")
    cfg = configmod.Config(tmp_path)
    assert cfg.outbound.disabled is False
    path.write_text("disabled = true\nconcurrency_max = 7\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert cfg.outbound.disabled is True
    assert cfg.outbound.concurrency_max == 7


def test_the_queue_path_follows_a_reloaded_queue_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("mailflow.config.loader.RELOAD_CHECK_INTERVAL", 0.0)
    path = tmp_path / "outbound.ini"
    path.write_text("queue_dir = q1\n")
    cfg = configmod.Config(tmp_path)
    first = cfg.queue_path()
    assert first == tmp_path.parent / "q1" and cfg.queue_path() is first  # made once
    path.write_text(f"queue_dir = {tmp_path / 'q2'}\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert cfg.queue_path() == tmp_path / "q2"


def test_reload_happens_within_five_seconds_with_the_real_interval(tmp_path):
    assert configmod.RELOAD_CHECK_INTERVAL <= 5


def test_broken_reload_keeps_the_last_good_settings(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("mailflow.config.loader.RELOAD_CHECK_INTERVAL", 0.0)
    path = tmp_path / "outbound.ini"
    path.write_text("concurrency_max = 9\n")
    cfg = configmod.Config(tmp_path)
    path.write_text("concurrency_max = nine\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert cfg.outbound.concurrency_max == 9
    assert "concurrency_max must be a positive integer" in caplog.text


@pytest.mark.parametrize("name,text,error", [
    # at 7ff0849 this one only warned, and outbound TLS verification stayed off (issue 23 item 9)
    ("tls.ini", "[outbound]\nrejectUnauthorised = true\n",
     "tls.ini:2: unknown key 'rejectUnauthorised' (did you mean 'rejectUnauthorized'?)"),
    ("outbound.ini", "enable_tls = true\nmaxTempFailures = 13\n",
     "outbound.ini:2: unknown key 'maxTempFailures'"),
    ("outbound.ini", "concurency_max = 5\n", "outbound.ini:1: unknown key 'concurency_max' (did you mean "
                                              "'concurrency_max'?)"),
    ("tls.ini", "[main]\n[outbund]\nca = x\n",
     "tls.ini:2: unknown section [outbund] (did you mean [outbound]?)"),
    ("smtp.ini", "[smtp]\nlisten = 127.0.0.1:25\n", "smtp.ini:1: unknown section [smtp]"),
    ("auth_flat_file.ini", "[core]\nmethod = PLAIN\n", "auth_flat_file.ini:2: unknown key 'method' (did you "
                                                        "mean 'methods'?)"),
    ("metrics.ini", "lisen = 127.0.0.1:9\n", "metrics.ini:1: unknown key 'lisen' (did you mean 'listen'?)"),
])
def test_an_unknown_key_or_section_stops_the_start_and_says_where(tmp_path, name, text, error):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as exc:
        configmod.Config(tmp_path)
    assert str(exc.value).endswith(error)


def test_the_shipped_config_has_no_unknown_key():
    configmod.Config(Path(__file__).resolve().parents[2] / "config")


@pytest.mark.parametrize("raises", ["KeyboardInterrupt", "SystemExit(0)", "GeneratorExit"])
def test_a_plugin_that_raises_anything_at_import_is_one_line_and_exit_2(tmp_path, capsys, raises):
    """At 7ff0849 a KeyboardInterrupt from a plugin's import went out as a traceback."""
    module = f"interrupting_{raises.split('(')[0].lower()}"
    (tmp_path / f"{module}.py").write_text(f"raise {raises}\n")
    (tmp_path / "plugins").write_text(f"# one plugin\n{module}\n")
    with pytest.raises(SystemExit) as exc:
        startup.load_or_exit(tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mailflow: ")
    assert f"plugins:2: cannot import plugin {module!r}" in err[0]


def test_a_file_read_only_at_start_says_a_restart_is_needed_when_it_changes(tmp_path, monkeypatch,
                                                                          caplog):
    monkeypatch.setattr("mailflow.config.loader.RELOAD_CHECK_INTERVAL", 0.0)
    (tmp_path / "smtp.ini").write_text("max_recipients = 10\n")
    (tmp_path / "outbound.ini").write_text("concurrency_max = 9\n")
    cfg = configmod.Config(tmp_path)
    later = (time.time_ns() + 10**9,) * 2
    (tmp_path / "smtp.ini").write_text("max_recipients = 20\n")
    os.utime(tmp_path / "smtp.ini", ns=later)
    with caplog.at_level("INFO", logger="mailflow.config.loader"):
        assert cfg.outbound.concurrency_max == 9
        assert cfg.outbound.concurrency_max == 9  # said once per change, not per look
    warned = [r for r in caplog.records if "restart mailflow" in r.getMessage()]
    assert len(warned) == 1 and "smtp.ini" in warned[0].getMessage()
    assert cfg.smtp.max_recipients == 10  # the running process keeps what it started with
    assert not any("reloaded" in r.getMessage() for r in caplog.records)
    caplog.clear()
    (tmp_path / "outbound.ini").write_text("concurrency_max = 7\n")
    os.utime(tmp_path / "outbound.ini", ns=(later[0] + 10**9,) * 2)
    with caplog.at_level("INFO", logger="mailflow.config.loader"):
        assert cfg.outbound.concurrency_max == 7
    assert [r.getMessage() for r in caplog.records] == [f"reloaded outbound.ini from {tmp_path}"]


def test_tenants_ini_maps_users_and_bounds_the_metric_labels(tmp_path):
    from mailflow.config import tenants
    (tmp_path / "tenants.ini").write_text("[tenant:acme]\nusers = alice, carol\npool = marketing\n\n"
                                          "[tenant:globex]\n")
    found = tenants.load(tmp_path / "tenants.ini")
    assert found.of_user("carol") == "acme" and found.of_user("dave") is None
    assert found.by_name["acme"].pool == "marketing"
    assert [found.label(t) for t in ("acme", "initech", None)] == ["acme", "other", "-"]


@pytest.mark.parametrize(("text", "says"), [
    ("[acme]\n", "a section is [tenant:NAME]"),
    ("[tenant:a/b]\n", "letters, digits"),
    ("[tenant:a]\ncolour = red\n", "unknown key"),
    ("[tenant:a]\nusers = u\n[tenant:b]\nusers = u\n", "is in [tenant:a] and [tenant:b]"),
])
def test_a_broken_tenants_ini_is_one_line(tmp_path, text, says):
    from mailflow.config import tenants
    (tmp_path / "tenants.ini").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)):
        tenants.load(tmp_path / "tenants.ini")


def test_the_messages_metric_counts_listed_tenants_by_name_and_the_rest_as_other(tmp_path):
    from mailflow import config as configmod
    from mailflow.observation.metrics import HostCollector
    from mailflow.queue import counters
    (tmp_path / "me").write_text("mailflow.test\n")
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "tenants.ini").write_text("[tenant:acme]\n")
    cfg = configmod.load(tmp_path)
    root = cfg.queue_path()
    for tenant, n in (("acme", 2), ("initech", 3), ("umbrella", 4), (None, 5)):
        counters.add_outcome(root, "delivered", {"tenant": tenant} if tenant else {}, n)
    family = HostCollector(cfg)._messages(root)
    found = {tuple(s.labels[k] for k in ("outcome", "tenant")): s.value for s in family.samples
             if s.name.endswith("_total")}
    assert {k[1]: v for k, v in found.items() if k[0] == "delivered"} == {"-": 5, "acme": 2, "other": 7}
    assert counters.read(root, "delivered") == 14  # the total is kept as before


EGRESS_OK = ("[main]\ndefault_pool = p\n[source:a]\naddress = 127.0.0.1\nehlo = a.example.com\n"
             "[source:b]\naddress = ::1\nehlo = b.example.com\n[pool:p]\nsources = a:3, b\n")


def test_egress_pools_take_their_sources_in_weighted_turn(tmp_path):
    from mailflow.config import egress
    (tmp_path / "egress.ini").write_text(EGRESS_OK)
    found = egress.load(tmp_path / "egress.ini")
    assert found.default_pool == "p" and found.sources["b"].address == "::1"
    turns = [found.choose("p").name for _ in range(40)]
    assert turns.count("a") == 30 and turns.count("b") == 10
    assert "b" in turns[:4]  # spread through the run, not 30 then 10
    found.check_local(tmp_path / "egress.ini")  # loopback addresses: this host's


@pytest.mark.parametrize(("text", "says"), [
    ("[source:a]\naddress = 127.0.0.1\n", "needs address and ehlo"),
    ("[source:a]\naddress = not-an-ip\nehlo = a.example.com\n", "is not an IP address"),
    ("[source:a]\naddress = 127.0.0.1\nehlo = bad name\n", "is not a host name"),
    ("[pool:p]\nsources = ghost\n", "there is no [source:ghost]"),
    (EGRESS_OK.replace("a:3", "a:0"), "must be a whole number, 1 or more"),
    (EGRESS_OK.replace("default_pool = p", "default_pool = q"), "there is no [pool:q]"),
    ("[relay:x]\n", "a section is [source:NAME] or [pool:NAME]"),
    (EGRESS_OK + "colour = red\n", "unknown key"),
])
def test_a_broken_egress_ini_is_one_line(tmp_path, text, says):
    from mailflow.config import egress
    (tmp_path / "egress.ini").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)):
        egress.load(tmp_path / "egress.ini")


def test_a_pool_named_by_a_tenant_or_a_route_must_exist(tmp_path):
    from mailflow import config as configmod
    (tmp_path / "me").write_text("mailflow.test\n")
    (tmp_path / "egress.ini").write_text(EGRESS_OK)
    (tmp_path / "tenants.ini").write_text("[tenant:acme]\npool = nope\n")
    with pytest.raises(ConfigError, match="egress.ini has no such pool"):
        configmod.load(tmp_path)
    (tmp_path / "tenants.ini").write_text("[tenant:acme]\npool = p\n")
    (tmp_path / "routes.ini").write_text("[example.com]\nvia = 127.0.0.1:25\npool = nope\n")
    with pytest.raises(ConfigError, match=re.escape("[example.com] pool = nope")):
        configmod.load(tmp_path)


def test_a_source_this_host_lacks_is_found_at_start(tmp_path):
    from mailflow.config import egress
    (tmp_path / "egress.ini").write_text("[source:far]\naddress = 192.0.2.10\nehlo = far.example.com\n")
    with pytest.raises(ConfigError, match="192.0.2.10 is not an address of this host"):
        egress.load(tmp_path / "egress.ini").check_local(tmp_path / "egress.ini")


def test_warm_up_counts_per_utc_day_of_use_and_then_no_cap(tmp_path, monkeypatch):
    import datetime

    from mailflow.config.egress import Source
    from mailflow.relay import warmup
    monkeypatch.setenv("MAILFLOW_STATE_DIR", str(tmp_path))
    source = Source("new", "127.0.0.1", "new.example.com", (2, 3))
    day1 = datetime.date(2026, 12, 6)
    assert warmup.allowance(source, day1) == warmup.Allowance(0, 2)  # never used
    assert [warmup.take(source, day1) for _ in range(3)] == [True, True, False]
    day2 = day1 + datetime.timedelta(days=1)
    assert warmup.allowance(source, day2) == warmup.Allowance(2, 3)
    assert [warmup.take(source, day2) for _ in range(4)] == [True, True, True, False]
    day3 = day2 + datetime.timedelta(days=1)
    assert warmup.allowance(source, day3) == warmup.Allowance(3, None)  # past the list
    assert all(warmup.take(source, day3) for _ in range(10))
    assert warmup.take(Source("plain", "127.0.0.1", "p.example.com"), day1)  # no warm-up at all


def test_a_pool_whose_sources_are_all_capped_has_no_room(tmp_path):
    from mailflow.config import egress
    (tmp_path / "egress.ini").write_text(EGRESS_OK)
    found = egress.load(tmp_path / "egress.ini")
    assert {found.choose("p", lambda s: s.name == "b").name for _ in range(5)} == {"b"}
    with pytest.raises(egress.NoRoom):
        found.choose("p", lambda s: False)
