"""Queue files and the queue directory: names, format, atomic writes, start-up recovery."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailflow.queue import entry as qfile
from mailflow.queue.entry import EntryName
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import Spool
from tests.support.entries import make_entry


def test_name_round_trip_and_sort_order():
    a = EntryName(1_000, 2, 900, "ABC-1.1", "example.com")
    b = EntryName(20_000, 0, 900, "ABC-1.2", "ex.org")
    assert EntryName.parse(str(a)) == a
    assert sorted([str(b), str(a)]) == [str(a), str(b)]  # zero padding: due order
    assert EntryName.parse("__tmp__.1.x") is None
    assert EntryName.parse("error." + str(a)) is None
    assert EntryName.parse("random") is None
    assert a.rescheduled(5_000, 3).num_failures == 3


def test_write_then_load(tmp_path):
    spool = Spool(tmp_path).ensure()
    entry = make_entry()
    [path] = spool.write([entry], b"Subject: x\r\n\r\n..dot\r\n")
    hmail = HMail.load(path)
    assert hmail.todo.uuid == "U.1" and hmail.todo.notes == {"k": "v"}
    assert hmail.todo.rcpt_to[0].address == "x@example.com"
    assert hmail.message() == b"Subject: x\r\n\r\n..dot\r\n"
    assert hmail.num_failures == 0 and hmail.filename == path.name
    assert not [p for p in spool.pending.iterdir() if p.name.startswith("__tmp__")]


def test_listing_needs_no_file_opened(tmp_path):
    spool = Spool(tmp_path).ensure()
    spool.write([make_entry("U.1", "a.example"), make_entry("U.2", "b.example")], b"x\r\n")
    for p in spool.pending.iterdir():
        p.chmod(0)  # even unreadable files are listed from their names
    assert sorted(n.domain for n in spool.names()) == ["a.example", "b.example"]


def test_recover_removes_dead_writers_temp_files_and_moves_corrupt_aside(tmp_path):
    spool = Spool(tmp_path).ensure()
    [good] = spool.write([make_entry("G.1")], b"ok\r\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = spool.pending / f"__tmp__.{dead}.{EntryName(1, 0, 1, 'T.1', 'x.example')}"
    stale.write_bytes(b"half")
    alive = spool.pending / f"__tmp__.1.{EntryName(1, 0, 1, 'T.2', 'x.example')}"  # pid 1 lives
    alive.write_bytes(b"half")
    corrupt = spool.pending / str(EntryName(1, 0, 1, "C.1", "x.example"))
    corrupt.write_bytes(b"\x00\x00\x10\x00{not json")
    (spool.active / "claim1").mkdir()
    short = spool.active / "claim1" / str(EntryName(1, 0, 1, "C.2", "x.example"))
    short.write_bytes(b"\x00")
    assert spool.recover() == (1, 2)
    assert not stale.exists() and alive.exists() and good.exists()
    assert (spool.pending / ("error." + corrupt.name)).exists()
    assert (spool.active / "claim1" / ("error." + short.name)).exists()
    assert [n.id for n in spool.names()] == ["G.1"]


@pytest.mark.parametrize("pad", [0, qfile.HEAD_READ, 3 * qfile.HEAD_READ])
def test_a_todo_of_any_length_loads_with_its_message_where_it_begins(tmp_path, pad):
    """``load`` reads the head of the file once; a todo longer than that read is read on."""
    spool = Spool(tmp_path).ensure()
    message = b"Subject: x\r\n\r\n" + b"line\r\n" * 5000
    [path] = spool.write([make_entry(pad=pad)], message)
    with open(path, "rb") as fh:
        want_todo, want_offset = qfile.read_header(fh)
    hmail = HMail.load(path)
    assert (hmail.todo, hmail.offset) == (want_todo, want_offset) and hmail.todo.notes.get("k") == "v"
    assert hmail.message_file().small() == message == hmail.message()
    whole = path.read_bytes()
    for cut in (2, want_offset - 1):  # shorter than the length field; a truncated todo
        path.write_bytes(whole[:cut])
        with pytest.raises(qfile.CorruptEntry):
            HMail.load(path)


def test_corrupt_header_is_reported(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(qfile._LEN.pack(5) + b"[1,2]")
    with pytest.raises(qfile.CorruptEntry):
        qfile.load(p)


def test_json_header_is_plain_json(tmp_path):
    spool = Spool(tmp_path).ensure()
    [path] = spool.write([make_entry()], b"m\r\n")
    raw = path.read_bytes()
    length = int.from_bytes(raw[:4], "big")
    assert json.loads(raw[4:4 + length])["domain"] == "example.com"
    assert raw[4 + length:] == b"m\r\n"


def test_a_failed_write_leaves_nothing(tmp_path):
    """The second of two entries hits a file size limit (as on a full disk): neither remains."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.support.entries import make_entry
        from mailflow.queue.spool import Spool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        spool = Spool({str(tmp_path)!r}).ensure()
        resource.setrlimit(resource.RLIMIT_FSIZE, (700_000, 700_000))
        try:
            spool.write([make_entry("A.1", "a.example"),
                         make_entry("A.2", "b.example", pad=200_000)],
                        b"x" * 600_000)
        except OSError as exc:
            print("failed", exc.errno)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.startswith("failed"), out.stderr
    assert os.listdir(tmp_path / "pending") == []


def test_claims_are_exclusive_and_expire_back_to_pending(tmp_path):
    spool = Spool(tmp_path).ensure()
    spool.write([make_entry("E.1"), make_entry("E.2")], b"m\r\n")
    names = sorted(spool.names())
    claim, got = spool.claim(names)
    assert sorted(got) == [str(n) for n in names]
    again, none = spool.claim(names)  # a second claimer gets nothing
    assert none == [] and not (spool.active / again).exists()
    assert sorted(spool.names("active")) == names and list(spool.names()) == []
    assert spool.expire(60) == 0  # a fresh lease holds
    old = time.time() - 120
    os.utime(spool.active / claim, (old, old))
    assert spool.expire(60) == 2
    assert sorted(spool.names()) == names and spool.claims() == []
    assert spool.renew(claim) is False  # the late holder finds its claim gone
    claim2, _ = spool.claim(names)
    assert spool.renew(claim2) is True



def test_a_split_moves_some_of_a_claim_into_a_claim_of_its_own(tmp_path):
    from mailflow.queue.entry import BadName

    spool = Spool(tmp_path).ensure()
    spool.write([make_entry("E.1"), make_entry("E.2"), make_entry("E.3")], b"m\r\n")
    names = sorted(str(n) for n in spool.names())
    claim, _ = spool.claim(names)
    os.rename(spool.claimed_path(claim, names[2]), spool.pending / names[2])  # went meanwhile
    apart, got = spool.split(claim, names[1:])
    assert got == [names[1]] and apart != claim
    assert [str(n) for n in spool.claim_names(apart)] == [names[1]]
    assert [str(n) for n in spool.claim_names(claim)] == [names[0]]
    none, nothing = spool.split(claim, [names[2]])  # nothing of it left: no directory made
    assert nothing == [] and none not in spool.claims()
    with pytest.raises(BadName):
        spool.split(claim, ["../" + names[0]])
    bounce, _ = spool.claim([], "failed")
    assert spool.split(bounce, [])[0].startswith("b-")  # a bounce claim's part returns to failed/


# ── names from task payloads (issue 10, item 11) ─────────────────────────────────────


@pytest.mark.parametrize("name", [
    "../pending", "0000000000001_0_0000000000001_../../x_a.example",
    "0000000000001_0_0000000000001_U.1_a/b", "/etc/passwd", "1_0_0000000000001_U.1_a.example",
    "0000000000001_00_0000000000001_U.1_a.example", "0000000000001_²_0000000000001_U.1_a.example",
    ".hidden", "", "0000000000001_0_0000000000001_U\0_a.example"])
def test_only_canonical_entry_names_are_names(name):
    from mailflow.queue.entry import BadName, check_name

    assert EntryName.parse(name) is None
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize("claim", ["../pending", "/tmp", "..", "b-../x", "0" * 31, "0" * 32 + "/x", 7])
def test_claim_ids_are_never_paths(tmp_path, claim):
    from mailflow.queue.entry import BadName
    from mailflow.wire.payloads import Batch

    spool = Spool(tmp_path).ensure()
    with pytest.raises(BadName):
        spool.claim_dir(claim)  # type: ignore[arg-type]
    with pytest.raises(BadName):
        Batch.from_json({"owner": "h-1", "claim": claim, "names": []})
    spool.finish("0" * 32)  # a well-formed id that does not exist is no error
    assert spool.pending.is_dir()


def test_a_batch_names_only_entries_of_its_domain():
    from mailflow.queue.entry import BadName
    from mailflow.wire.payloads import Batch

    good = str(EntryName(1, 0, 1, "U.1", "a.example"))
    assert Batch.from_json({"owner": "h-1", "claim": "a" * 32, "names": [good], "domain": "a.example"})
    with pytest.raises(BadName):
        Batch.from_json({"owner": "h-1", "claim": "a" * 32, "names": [good], "domain": "b.example"})
    with pytest.raises(BadName):
        Batch.from_json({"owner": "../x", "claim": "a" * 32, "names": [good]})
    with pytest.raises(BadName):
        Batch.from_json(["not", "a", "batch"])


# ── expired claims (issue 10, item 12) ───────────────────────────────────────────────


def test_an_entry_stranded_in_an_expired_claim_is_seen_and_brought_back(tmp_path):
    from mailflow.queue import tools as queuetools

    spool = Spool(tmp_path).ensure()
    spool.write([make_entry("S.1"), make_entry("S.2")], b"x\r\n")
    claim, names = spool.claim(sorted(spool.names()))
    os.utime(spool.active / claim, (0, 0))  # its lease long expired
    # the first entry's way back is blocked (a directory of that name in pending/)
    obstacle = spool.pending / names[0]
    (obstacle / "x").mkdir(parents=True)
    assert spool.expire(60) == 1
    assert [d.name for d in spool.expired_dirs()] == [f".expired-{claim}"]
    # not out of sight: S.1 is counted and listed as queued (with S.2, back, and the obstacle)
    assert queuetools.stats(spool)["queued"] == 3
    assert sorted(r["id"] for r in queuetools.rows(spool)) == ["S.1", "S.2"]
    (obstacle / "x").rmdir()
    obstacle.rmdir()
    assert spool.expire(60) == 1  # the next pass finishes the job
    assert spool.expired_dirs() == []
    assert sorted(n.id for n in spool.names()) == ["S.1", "S.2"]


def test_recover_at_start_empties_expired_claims(tmp_path):
    spool = Spool(tmp_path).ensure()
    spool.write([make_entry("R.1")], b"x\r\n")
    claim, _ = spool.claim(list(spool.names()))
    os.rename(spool.active / claim, spool.active / f".expired-{claim}")  # a crash right here
    (spool.active / f".expired-{claim}" / "error.junk").write_text("x")
    spool.recover()
    assert [n.id for n in spool.names()] == ["R.1"]
    assert (spool.pending / "error.junk").exists() and spool.expired_dirs() == []
