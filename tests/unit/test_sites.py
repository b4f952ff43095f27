"""What the lookups learn of sites, and how the queue manager reads it back."""

from __future__ import annotations

import os
import threading
import time

import pytest

from mailflow.queue import sites as sitesmod
from mailflow.queue.entry import BadName
from mailflow.queue.sites import Sites, site_key
from mailflow.wire.mx import MX


def test_the_site_key_is_the_mx_set_whatever_the_order():
    a, b = MX("a.mx.example", 10), MX("b.mx.example", 10)
    assert site_key([a, b]) == site_key([b, a]) == site_key([MX("A.MX.example", 10), b])
    assert site_key([a, b]) != site_key([a]) != site_key([MX("a.mx.example", 20)])
    assert len(site_key([a])) == 16


def test_learned_sites_are_read_back_until_they_expire(tmp_path):
    writer, reader = Sites(tmp_path), Sites(tmp_path)
    assert reader.of("a.example") is None
    writer.learn("a.example", "0123456789abcdef")
    writer.learn("alone.example", None)
    assert Sites(tmp_path).of("a.example") == "0123456789abcdef"
    assert Sites(tmp_path).of("alone.example") == ""  # learned: it travels alone
    assert writer.fresh("a.example") and not writer.fresh("b.example")
    old = time.time() - sitesmod.SITE_TTL - 1
    os.utime(tmp_path / "sites" / "a.example", (old, old))
    assert Sites(tmp_path).of("a.example") is None  # past its TTL: claimed alone again
    assert Sites(tmp_path).expire() == 1
    assert not (tmp_path / "sites" / "a.example").exists()


def test_an_unknown_domain_is_looked_at_again_after_a_while(tmp_path, monkeypatch):
    reader = Sites(tmp_path)
    assert reader.of("a.example") is None
    Sites(tmp_path).learn("a.example", "0123456789abcdef")
    assert reader.of("a.example") is None  # cached for UNKNOWN_FOR
    clock = time.monotonic() + sitesmod.UNKNOWN_FOR + 1
    monkeypatch.setattr(sitesmod.time, "monotonic", lambda: clock)
    assert reader.of("a.example") == "0123456789abcdef"


def test_a_site_written_lately_is_not_written_again(tmp_path):
    sites = Sites(tmp_path)
    sites.learn("a.example", "0123456789abcdef")
    path = tmp_path / "sites" / "a.example"
    os.utime(path, (1, time.time() - 10))
    before = path.stat().st_mtime
    sites.learn("a.example", "0123456789abcdef")
    assert path.stat().st_mtime == before
    sites.learn("a.example", None)  # changed: written at once
    assert path.read_text() == ""


@pytest.mark.parametrize("domain", ["../x", ".hidden", "", "a/b", "a\0b"])
def test_a_domain_that_is_no_file_name_is_refused(tmp_path, domain):
    with pytest.raises(BadName):
        Sites(tmp_path).learn(domain, None)


def test_many_threads_learning_one_domain_at_once_all_succeed(tmp_path):
    """Lookups run in threads of one process: each writes a temp file of its own."""
    errors = []

    def learn():
        try:
            for _ in range(50):
                Sites(tmp_path).learn("a.example", "0123456789abcdef")
                Sites(tmp_path).learn("a.example", None)
        except Exception as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=learn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in (tmp_path / "sites").iterdir()] == ["a.example"]


def test_a_site_that_cannot_be_written_is_said_and_passed_over(tmp_path, caplog):
    (tmp_path / "sites").write_text("not a directory")
    assert Sites(tmp_path).learn("a.example", "0123456789abcdef") is False  # nothing to join by
    assert "could not write down the site of a.example" in caplog.text


def test_a_site_written_down_is_read_at_the_next_recheck_not_after_unknown_for(tmp_path):
    """A lookup gave a first-seen domain's mail back once its site was written: the queue
    manager, which found no site for it a moment ago, reads it at its next scan."""
    reader = Sites(tmp_path)
    Sites(tmp_path).learn("other.example", "0123456789abcdef")  # sites/ exists
    reader.recheck_unknown()
    assert reader.of("a.example") is None
    Sites(tmp_path).learn("a.example", "0123456789abcdef")
    assert reader.of("a.example") is None  # cached as unknown
    reader.recheck_unknown()
    assert reader.of("a.example") == "0123456789abcdef"
    assert Sites(tmp_path).known("a.example") and not Sites(tmp_path).known("b.example")


def test_a_site_is_worth_joining_once_another_domain_was_placed_there():
    company = sitesmod.Company()
    assert not company.joins("0123456789abcdef", "a.example")  # the first: goes as it is
    assert not company.joins("0123456789abcdef", "a.example")  # itself is no company
    assert company.joins("0123456789abcdef", "b.example")
    assert not company.joins("fedcba9876543210", "c.example")  # another site: none yet


def _cfg(tmp_path):
    from mailflow import config as configmod
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "me").write_text("mx.sender.example\n")
    (tmp_path / "tls.ini").write_text("[outbound]\nforce_tls_hosts = forced.example\n")
    return configmod.load(tmp_path)


@pytest.mark.parametrize("policy", ["sts", "dane", "refused", "tls.ini", "tls report"])
def test_a_domain_with_a_tls_policy_of_its_own_never_shares_a_site(tmp_path, monkeypatch, policy):
    """Its mail must not ride a session opened for another domain's weaker need: MTA-STS
    enforce, DANE, an MX host DANE refused, tls.ini naming it, a TLS report's exemption."""
    from mailflow.pipeline import lookup
    from mailflow.relay.security import RouteSecurity

    cfg = _cfg(tmp_path)
    mxs = [MX("a.mx.example", 10), MX("b.mx.example", 10)]

    def security(domain, found, tls, settings, **kw):
        made = RouteSecurity(domain=domain, tls=tls, settings=settings)
        if policy == "sts":
            made.sts = object()  # type: ignore[assignment]
        elif policy == "dane":
            made.dane["a.mx.example"] = object()  # type: ignore[assignment]
        elif policy == "refused":
            made.refused["a.mx.example"] = object()  # type: ignore[assignment]
        return made

    monkeypatch.setattr(lookup, "for_route", security)
    domain = "forced.example" if policy == "tls.ini" else "hosted.example"
    assert lookup._site_of(domain, mxs, policy == "tls report", cfg) is None
    monkeypatch.setattr(lookup, "for_route", lambda d, f, t, s, **kw: RouteSecurity(d, t, s))
    assert lookup._site_of("plain.example", mxs, False, cfg) == site_key(mxs)


def test_an_mx_rule_makes_one_site_of_every_domain_wholly_under_it(tmp_path, monkeypatch):
    from mailflow.pipeline import lookup
    from mailflow.relay.security import RouteSecurity

    (tmp_path / "shaping.ini").write_text("[mx:.prov.example]\nmax_connections = 5\n")
    cfg = _cfg(tmp_path)
    monkeypatch.setattr(lookup, "for_route", lambda d, f, t, s, **kw: RouteSecurity(d, t, s))
    one = [MX("aspmx.prov.example", 1)]
    two = [MX("alt1.prov.example", 5), MX("alt2.Prov.Example.", 10)]
    outside = [MX("aspmx.prov.example", 1), MX("backup.elsewhere.example", 20)]
    rule = sitesmod.suffix_key("mx:.prov.example")
    assert lookup._site_of("a.example", one, False, cfg) == rule
    assert lookup._site_of("b.example", two, False, cfg) == rule
    # a host outside the provider: the operator's rule does not speak for that domain
    assert lookup._site_of("c.example", outside, False, cfg) == site_key(outside)
    assert rule != site_key(one)


def test_a_batch_looks_at_each_domains_site_once_however_many_entries(tmp_path, monkeypatch):
    """The lookup stats a domain's site file to know whether to work it out again: once a
    batch (each stat gives the GIL up, with a hundred delivery threads waiting for it)."""
    from mailflow.pipeline import lookup
    from mailflow.queue.spool import Spool
    from mailflow.wire.payloads import Batch
    from tests.support.entries import make_entry

    (tmp_path / "routes.ini").write_text("[example.com]\nvia = 127.0.0.2\n")  # no DNS
    cfg = _cfg(tmp_path)
    spool = Spool(cfg.queue_path()).ensure()
    for n in range(20):
        spool.write([make_entry(f"A.{n}")], b"Subject: s\r\n\r\nm\r\n")
    Sites(spool.root).learn("example.com", None)  # written lately: not worked out again
    claim, names = spool.claim(sorted(spool.names()))
    looks: list[str] = []
    fresh = Sites.fresh
    monkeypatch.setattr(Sites, "fresh", lambda self, domain: looks.append(domain) or fresh(self, domain))
    [route] = lookup._routes(spool, Batch(spool.identity, claim, tuple(names), "example.com"))
    assert looks == ["example.com"]
    assert sorted(route.batch.names) == sorted(names) and route.mx[0].exchange == "127.0.0.2"
