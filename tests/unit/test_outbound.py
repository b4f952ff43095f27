"""outbound.send_email: the Python API (Haraka's outbound.send_email)."""

import io
from pathlib import Path

import pytest

from mailflow import config as configmod
from mailflow import outbound
from mailflow.codes import DENY, DENYSOFT, OK
from mailflow.message import dot_unstuff
from mailflow.queue.hmail import HMail


@pytest.fixture
def cfg(tmp_path):
    def make(**outbound_keys):
        lines = [f"queue_dir = {tmp_path / 'queue'}"] + [f"{k} = {v}" for k, v in outbound_keys.items()]
        (tmp_path / "outbound.ini").write_text("\n".join(lines) + "\n")
        (tmp_path / "me").write_text("mx.sender.example\n")
        return configmod.load(tmp_path)
    return make


def entries(tmp_path: Path) -> list[HMail]:
    d = tmp_path / "queue" / "pending"
    return [HMail.load(p) for p in sorted(d.iterdir())] if d.exists() else []


def test_ok_with_uuid_once_on_disk(cfg, tmp_path):
    cfg()
    code, text = outbound.send_email("a@sender.example", "b@dest.example", "Subject: s\n\nbody\n")
    assert code is OK
    assert text.startswith("Message Queued (") and text.endswith(")")
    uuid = text[len("Message Queued ("):-1]
    [h] = entries(tmp_path)
    assert h.todo.uuid == f"{uuid}.1"
    assert h.todo.mail_from.address == "a@sender.example"
    assert [r.address for r in h.todo.rcpt_to] == ["b@dest.example"]
    body = dot_unstuff(h.message())
    assert body.endswith(b"Subject: s\r\n\r\nbody\r\n")
    assert f"Message-Id: <{uuid}@mx.sender.example>".encode() in body
    assert b"\r\nDate: " in body
    assert body.startswith(b"Received: by mx.sender.example (mailflow outbound) id ")


def test_next_callback_gets_the_same_answer(cfg):
    cfg()
    seen = []
    result = outbound.send_email("a@x.example", ["b@y.example"], b"x", lambda c, m: seen.append((c, m)))
    assert seen == [result]


@pytest.mark.parametrize("sender,to,why", [
    ("not an address", "b@y.example", "malformed"),
    ("a@x.example", "b@", "malformed"),
    ("a@x.example", [], "no recipients"),
    ("a@x.example", ["ok@y.example", "<@route:bad@z.example>"], "malformed"),
])
def test_deny_for_bad_addresses_or_no_recipient(cfg, tmp_path, sender, to, why):
    cfg()
    code, text = outbound.send_email(sender, to, "x")
    assert code is DENY and why in text
    assert entries(tmp_path) == []


def test_null_sender_is_accepted(cfg, tmp_path):
    cfg()
    assert outbound.send_email("<>", "b@y.example", "x")[0] is OK
    assert entries(tmp_path)[0].todo.mail_from.is_null


def test_split_per_domain_and_always_split(cfg, tmp_path):
    cfg()
    rcpts = ["a@one.example", "b@two.example", "c@one.example"]
    outbound.send_email("s@x.example", rcpts, "x")
    by_domain = {h.todo.domain: [r.address for r in h.todo.rcpt_to] for h in entries(tmp_path)}
    assert by_domain == {"one.example": ["a@one.example", "c@one.example"],
                         "two.example": ["b@two.example"]}


def test_always_split_gives_one_entry_per_recipient(cfg, tmp_path):
    cfg(always_split="true")
    outbound.send_email("s@x.example", ["a@one.example", "b@two.example", "c@one.example"], "x")
    assert sorted(r.address for h in entries(tmp_path) for r in h.todo.rcpt_to) == [
        "a@one.example", "b@two.example", "c@one.example"]
    assert len(entries(tmp_path)) == 3


def test_dot_stuffed_contents_are_not_stuffed_twice(cfg, tmp_path):
    cfg()
    outbound.send_email("s@x.example", "r@y.example", "Subject: s\r\n\r\n..already\r\n",
                        dot_stuffed=True)
    outbound.send_email("s@x.example", "r@z.example", "Subject: s\r\n\r\n.raw\r\n")
    stored = {h.todo.domain: h.message() for h in entries(tmp_path)}
    assert stored["y.example"].endswith(b"\r\n\r\n..already\r\n")
    assert stored["z.example"].endswith(b"\r\n\r\n..raw\r\n")


def test_notes_become_todo_notes(cfg, tmp_path):
    cfg()
    outbound.send_email("s@x.example", "r@y.example", "x",
                        notes={"outbound_ip": "127.0.0.2", "outbound_helo": "h.example"})
    assert entries(tmp_path)[0].todo.notes == {"outbound_ip": "127.0.0.2", "outbound_helo": "h.example"}


@pytest.mark.parametrize("contents", [
    "Subject: s\n\nline\n", b"Subject: s\r\n\r\nline\r\n", ["Subject: s", "", "line"],
    io.BytesIO(b"Subject: s\n\nline\n")])
def test_contents_forms(cfg, tmp_path, contents):
    cfg()
    assert outbound.send_email("s@x.example", "r@y.example", contents)[0] is OK
    assert dot_unstuff(entries(tmp_path)[0].message()).endswith(b"Subject: s\r\n\r\nline\r\n")


def test_received_header_follows_config(cfg, tmp_path):
    cfg(received_header="my relay")
    outbound.send_email("s@x.example", "r@y.example", "Subject: s\n\nx\n")
    cfg(received_header="disabled")
    outbound.send_email("s@x.example", "r@z.example", "Subject: s\n\nx\n")
    stored = {h.todo.domain: h.message() for h in entries(tmp_path)}
    assert b"(my relay)" in stored["y.example"].split(b"\r\n")[0]
    assert b"Received:" not in stored["z.example"]


def test_existing_message_id_and_date_are_kept(cfg, tmp_path):
    cfg()
    msg = "Message-ID: <mine@x>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: s\n\nb\n"
    outbound.send_email("s@x.example", "r@y.example", msg)
    body = entries(tmp_path)[0].message()
    assert body.count(b"Message-I") == 1 and body.count(b"Date:") == 1


def test_unwritable_queue_is_denysoft_and_leaves_nothing(cfg, tmp_path):
    cfg()
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "pending").write_text("a file where the directory should be")
    code, text = outbound.send_email("s@x.example", ["a@one.example", "b@two.example"], "x")
    assert code is DENYSOFT and "queue write failed" in text
