"""The HTTP API's parts on their own: keys, the rate limiter, messages from fields and
templates, and requests queued whole or not at all."""

from __future__ import annotations

import email
import os
from email import policy

import pytest

from mailflow.address import parse_address
from mailflow.api import idempotency
from mailflow.api.compose import JINJA, STATIC, Attachment, ComposeError, Composer, Content
from mailflow.api.keys import Keys, digest_of, parse
from mailflow.api.ratelimit import RateLimiter
from mailflow.config.files import ConfigError
from mailflow.queue import staging
from mailflow.queue.entry import EntryName
from mailflow.queue.spool import NewEntry, Spool, now_ms
from mailflow.queue.todo import ToDo


def test_a_key_is_found_by_its_secret_and_only_its_hash_is_kept(tmp_path):
    keys = Keys(tmp_path)
    secret = keys.add("billing", tenant="acme", rate=60)
    assert secret.startswith("mf_") and len(secret) > 40
    text = (tmp_path / "apikeys").read_text()
    assert secret not in text and digest_of(secret) in text
    assert oct((tmp_path / "apikeys").stat().st_mode & 0o777) == "0o600"
    found = Keys(tmp_path).find(secret)
    assert found is not None and (found.name, found.tenant, found.rate) == ("billing", "acme", 60)
    assert keys.find(secret[:-1]) is None and keys.find("") is None
    with pytest.raises(ValueError, match="already"):
        keys.add("billing")
    assert keys.remove("billing") and keys.find(secret) is None and not keys.remove("billing")


@pytest.mark.parametrize("line", ["billing", "billing abc", "bad/name " + "0" * 64,
                                  "b " + "0" * 64 + " rate=-1", "b " + "0" * 64 + " colour=red",
                                  "b " + "0" * 64 + " tenant=a/b"])
def test_a_broken_key_line_is_one_error_naming_the_line(tmp_path, line):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path / "apikeys", "# a comment\n\n" + line + "\n")
    assert caught.value.line == 3


def test_the_rate_admits_a_request_whole_or_says_how_long_to_wait():
    limiter = RateLimiter()
    assert limiter.take("k", 3, 5, now=0.0) is None
    assert limiter.take("k", 2, 5, now=10.0) is None
    assert limiter.take("k", 1, 5, now=20.0) == pytest.approx(40.0)  # when the first 3 leave
    assert limiter.take("k", 3, 5, now=60.5) is None  # they left
    assert limiter.take("k", 9, 5, now=61.0) == 60.0  # never fits in one minute
    assert limiter.take("other", 100, 0, now=61.0) is None  # no limit


def test_the_idempotency_record_name_is_the_keys_and_the_clients_together():
    a = idempotency.record_name("app", "k1")
    assert a == idempotency.record_name("app", "k1") != idempotency.record_name("other", "k1")
    assert idempotency.record_name("app", None) != idempotency.record_name("app", None)
    staging.check_name(a)
    for hostile in ("../../etc", "a/b", "n-" + "x" * 100, ""):  # never a path of its own
        with pytest.raises(ValueError):
            staging.check_name(hostile)
    with pytest.raises(ValueError):
        idempotency.check_key("x" * 256)


def _message(composer: Composer, rcpt: str, **subs: str) -> email.message.EmailMessage:
    return email.message_from_bytes(composer.message(rcpt, None, subs), policy=policy.default)


def test_static_content_is_sent_as_written_and_jinja_is_rendered_per_recipient():
    static = Composer(Content(subject="Hi {{ name }}", text_body="x"), STATIC, {})
    assert _message(static, "a@example.net", name="A")["Subject"] == "Hi {{ name }}"
    jinja = Composer(Content(raw="Subject: Hi {{ name }}\n\nBody {{ name }}\n"), JINJA, {"name": "all"})
    assert _message(jinja, "a@example.net")["Subject"] == "Hi all"
    assert _message(jinja, "a@example.net", name="B").get_content().strip() == "Body B"


def test_a_substitution_cannot_add_a_header_and_a_runaway_template_stops():
    composer = Composer(Content(subject="{{ s }}", text_body="x"), JINJA, {})
    with pytest.raises(ComposeError):
        composer.message("a@example.net", None, {"s": "hi\r\nBcc: everyone@example.org"})
    looping = Composer(Content(text_body="{% for i in range(100000) %}{% for j in range(100000) %}"
                               "{% endfor %}{% endfor %}"), JINJA, {})
    with pytest.raises(ComposeError, match="content.text_body"):
        looping.message("a@example.net", None, {})


def test_an_inline_attachment_goes_beside_the_html_body():
    content = Content(html_body="<img src='cid:logo'>", text_body="t",
                      attachments=(Attachment(b"\x89PNG", "image/png", "logo.png", "logo"),))
    msg = _message(Composer(content, STATIC, {}), "a@example.net")
    related = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
    assert related and any(p["Content-ID"] == "<logo>" and p.get_content_disposition() == "inline"
                           for p in related[0].iter_parts())


def _entries(n: int) -> list[NewEntry]:
    out = []
    for i in range(n):
        todo = ToDo(uuid=f"U{i}.1", queue_time=now_ms(), domain="example.net",
                    mail_from=parse_address("a@example.com"), rcpt_to=[parse_address(f"r{i}@example.net")])
        out.append(NewEntry(EntryName(now_ms(), 0, now_ms(), todo.uuid, todo.domain), todo))
    return out


def test_a_committed_request_is_queued_whole(tmp_path):
    spool = Spool(tmp_path / "q").ensure()
    staged = staging.Staged.begin(spool, "i-" + "a" * 40)
    with pytest.raises(staging.InFlight):
        staging.Staged.begin(spool, "i-" + "a" * 40)
    for entry in _entries(3):
        staged.write([entry], b"Subject: x\r\n\r\nx\r\n")
    assert not os.listdir(spool.pending)  # nothing queued before the commit
    staged.commit({"answer": {"ok": 1}})
    assert len(os.listdir(spool.pending)) == 3 and not os.listdir(spool.root / staging.INCOMING)
    assert staging.read_record(spool, "i-" + "a" * 40)["answer"] == {"ok": 1}


def test_after_a_crash_an_uncommitted_request_goes_and_a_committed_one_is_finished(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "q").ensure()
    uncommitted = staging.Staged.begin(spool, "n-" + "b" * 32)
    uncommitted.write(_entries(2)[:1], b"x\r\n")
    committed = staging.Staged.begin(spool, "n-" + "c" * 32)
    committed.write(_entries(2)[1:], b"x\r\n")
    # the crash: the record is written, the messages not moved yet
    monkeypatch.setattr(staging, "finish", lambda spool, directory: 0)
    committed.commit({"answer": {}})
    monkeypatch.undo()
    for staged in (uncommitted, committed):  # their writer died
        (staged.directory / staging.OWNER).write_text("999999999")
    assert staging.recover(spool) == (1, 1)
    [queued] = os.listdir(spool.pending)
    assert "U1.1" in queued and not os.listdir(spool.root / staging.INCOMING)


def test_a_request_whose_writer_lives_is_left_alone(tmp_path):
    spool = Spool(tmp_path / "q").ensure()
    staged = staging.Staged.begin(spool, "n-" + "d" * 32)
    (staged.directory / staging.OWNER).write_text(str(os.getppid()))  # a live process
    assert staging.recover(spool) == (0, 0) and staged.directory.exists()


def test_old_records_expire(tmp_path):
    spool = Spool(tmp_path / "q").ensure()
    staging.Staged.begin(spool, "i-" + "e" * 40).commit({"answer": {}})
    record = staging.record_path(spool, "i-" + "e" * 40)
    assert staging.expire(spool, 3600) == 0
    os.utime(record, (1, 1))
    assert staging.expire(spool, 3600) == 1 and not record.exists()


def test_with_redis_the_rate_is_one_for_every_process_and_host():
    """Two limiters stand for two submission processes (or hosts) sharing a Redis: the key's
    messages a minute are counted together, a request whole or not at all."""
    import uuid

    from harness import brokers
    url = brokers.url_for("redis")
    one, two = RateLimiter(url), RateLimiter(url)
    key = f"shared-{uuid.uuid4().hex[:8]}"
    assert one.take(key, 3, 5) is None
    wait = two.take(key, 3, 5)  # 3 + 3 > 5: refused whole, with the time until the first 3 leave
    assert wait is not None and 55 <= wait <= 60
    assert two.take(key, 2, 5) is None  # 3 + 2 = 5: fits
    assert one.take(key, 1, 5) is not None
    assert one.take(key, 9, 5) == 60.0  # never fits in a minute


def test_a_redis_that_does_not_answer_leaves_the_rate_to_this_process(caplog):
    limiter = RateLimiter("redis://127.0.0.1:1/0")
    assert limiter.take("k", 3, 5) is None and limiter.take("k", 3, 5) is not None  # counted here
    assert "counted in this process only" in caplog.text
