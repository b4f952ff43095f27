"""One validator for every name from a payload (mailflow/wire/names.py, issue 23 item 2):
nothing a forged or mistaken payload names becomes a path outside the queue directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailflow import config
from mailflow.errors import NothingToDo
from mailflow.webhooks.sender import deliver
from mailflow.wire.names import (
    BadName,
    EntryName,
    check_claim,
    check_domain,
    check_identity,
    check_name,
    check_site,
    check_webhook_batch,
)
from mailflow.wire.payloads import Batch, Route

HOSTILE = ["/etc", "/tmp/x", "..", "../x", "../../victim", "a/b", "x\0y", "", " ", "\n",
           "0" * 31, "0" * 33, "g" * 32, "A" * 32, 7, None, ["0" * 32], {"x": 1}, "b-" + "0" * 31]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_no_claim_and_no_batch(value):
    with pytest.raises(BadName):
        check_claim(value)
    with pytest.raises(BadName):
        check_webhook_batch(value)


@pytest.mark.parametrize("value", ["/etc", "..", ".hidden", "-x", "a/b", "x\0", "", 5, None, "a" * 101])
def test_hostile_values_are_no_identity(value):
    with pytest.raises(BadName):
        check_identity(value)


@pytest.mark.parametrize("value", [
    "0000000000001_0_0000000000001_id_example.com/../../x",
    "/0000000000001_0_0000000000001_id_example.com",
    "1_0_1_id_example.com",  # not zero-padded: not canonical
    "0000000000001_00_0000000000001_id_example.com",
    "__tmp__.1.0000000000001_0_0000000000001_id_example.com",
    "error.0000000000001_0_0000000000001_id_example.com",
    "0000000000001_0_0000000000001__example.com",
    "0000000000001_0_0000000000001_id_x\0y",
    "..", 3, None,
])
def test_hostile_values_are_no_entry_name(value):
    with pytest.raises(BadName):
        check_name(value)


@pytest.mark.parametrize("value", ["0000000000001_0_0000000000001_id_example.com/../../x", "..", "/etc"])
def test_a_claims_paths_are_built_from_checked_names_only(tmp_path, value):
    from mailflow.queue.spool import Spool
    spool = Spool(tmp_path / "queue").ensure()
    good = "0000000000001_0_0000000000001_id_example.com"
    with pytest.raises(BadName):
        list(spool.claimed_paths("0" * 32, [good, value]))
    with pytest.raises(BadName):
        list(spool.claimed_paths(value, [good]))
    assert list(spool.claimed_paths("0" * 32, [good])) == [spool.active / ("0" * 32) / good]


def test_a_name_parsed_before_answers_the_same_and_its_variants_are_still_refused():
    """Parsing is remembered per string (names meet every step several times): what was
    parsed once is the same answer again, and a near variant -- not zero-padded, a path
    around it -- is judged on its own, never given the canonical name's answer."""
    name = str(EntryName(1, 0, 1, "cached.1", "example.com"))
    first = EntryName.parse(name)
    assert first is not None and EntryName.parse(name) is first
    for variant in ("1_0_1_cached.1_example.com", f"../{name}", f"{name}/x", f"{name}\0"):
        assert EntryName.parse(variant) is None
        with pytest.raises(BadName):
            check_name(variant)
    assert EntryName.parse(name) == EntryName(1, 0, 1, "cached.1", "example.com")


def test_the_queues_own_names_pass():
    assert check_claim("0123456789abcdef" * 2) and check_claim("b-" + "f" * 32)
    assert check_webhook_batch("a" * 32)
    assert check_identity("vm-1a2b.example_x")
    name = str(EntryName(1, 2, 3, "abc.1", "example.com"))
    assert check_name(name) == name


def test_the_webhook_sender_takes_a_batch_name_never_a_path(tmp_path: Path):
    """A payload naming a directory (absolute, or ``../``) is refused before any path is built:
    at 7ff0849 the sender listed the directory's files, moved its subdirectories into the
    queue and removed it."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "f").write_text("keep")
    cfgdir = tmp_path / "config"
    cfgdir.mkdir()
    (cfgdir / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (cfgdir / "webhooks.ini").write_text("[app]\nurl = http://127.0.0.1:9/hook\nevents = delivered\n")
    cfg = config.load(cfgdir)
    before = sorted(os.walk(victim))
    for batch in (str(victim), "../../victim", "../" * 8 + str(victim)[1:]):
        with pytest.raises(NothingToDo):
            deliver(cfg, batch)
    assert sorted(os.walk(victim)) == before
    assert (victim / "sub" / "f").read_text() == "keep"
    assert not (tmp_path / "queue").exists()


@pytest.mark.parametrize("value", HOSTILE + ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0"])
def test_hostile_values_are_no_site(value):
    with pytest.raises(BadName):
        check_site(value)


@pytest.mark.parametrize("value", ["/etc", "..", "../x", ".hidden", "a/b", "x\0y", "", 7, None])
def test_hostile_values_are_no_domain_to_name_a_file(value):
    with pytest.raises(BadName):
        check_domain(value)


SITE_BATCH = {"owner": "q1", "claim": "0" * 32, "site": "0123456789abcdef",
              "names": ["1700000000000_0_1700000000000_m1.1_a.example",
                        "1700000000000_0_1700000000000_m2.1_b.example"]}


def test_a_site_batch_names_entries_of_several_domains():
    batch = Batch.from_json(SITE_BATCH)
    assert (batch.site, batch.domain) == ("0123456789abcdef", None)
    assert Batch.from_json(batch.to_json()) == batch
    route = Route.from_json({**SITE_BATCH, "mx": [{"exchange": "mx.example"}]}, Path("/nonexistent"))
    assert route.domain == "a.example"  # its first entry's: logs and the pool name it so


@pytest.mark.parametrize("change", [
    {"site": "../../etc"}, {"site": 5}, {"domain": "a.example"},  # a site batch has no one domain
    {"claim": "b-" + "0" * 32},  # a bounce claim is never a site's
])
def test_a_site_batch_that_is_not_one_is_refused(change):
    with pytest.raises(BadName):
        Batch.from_json({**SITE_BATCH, **change})


def test_a_route_names_its_domain_or_its_site():
    data = {k: v for k, v in SITE_BATCH.items() if k != "site"}
    with pytest.raises(BadName, match="domain or its site"):
        Route.from_json({**data, "mx": [{"exchange": "mx.example"}]}, Path("/nonexistent"))


def test_a_routes_pool_on_the_wire_is_a_name_or_refused(tmp_path):
    base = Route.from_json({**SITE_BATCH, "mx": [{"exchange": "mx.example"}]}, tmp_path)
    assert base.pool is None
    assert Route.from_json({**base.to_json(tmp_path), "pool": "bulk"}, tmp_path).pool == "bulk"
    for bad in ("../x", "", 7, "a b"):
        with pytest.raises(BadName):
            Route.from_json({**base.to_json(tmp_path), "pool": bad}, tmp_path)


def test_a_routes_slot_grant_is_a_token_or_refused(tmp_path):
    base = Route.from_json({**SITE_BATCH, "mx": [{"exchange": "mx.example"}]}, tmp_path)
    token = "0123456789abcdef" * 2
    assert Route.from_json(base.granted(token).to_json(tmp_path), tmp_path).slot_grant == token
    assert base.turn == "a.example" and base.granted(None).slot_grant is None
    for bad in ("../x", token.upper(), token + "0", 7):
        with pytest.raises(BadName):
            Route.from_json({**base.to_json(tmp_path), "slot_grant": bad}, tmp_path)


def test_a_routes_tenant_and_an_outcomes_source_are_names_or_nothing(tmp_path):
    """A forged route naming a tenant that is no name is refused before anything is done with
    it; a report's source that is no name is dropped, never written into a line or an event."""
    from mailflow.wire.payloads import Outcome
    base = Route.from_json({**SITE_BATCH, "mx": [{"exchange": "mx.example"}]}, tmp_path)
    assert Route.from_json({**base.to_json(tmp_path), "tenant": "acme"}, tmp_path).tenant == "acme"
    for bad in ("../../etc", "a\nb", 3, ""):
        with pytest.raises(BadName):
            Route.from_json({**base.to_json(tmp_path), "tenant": bad}, tmp_path)
    sent = Outcome(host="mx.example", source="mta1").to_json()
    assert Outcome.from_json(sent).source == "mta1"
    assert Outcome.from_json({**sent, "source": "x y\nsource=forged"}).source is None
