"""The HTTP injection API against the real listener: real HTTP requests (urllib) into
``mailflow smtpd``, a real worker, and an aiosmtpd MX that shows what arrived."""

from __future__ import annotations

import base64
import email
import json
import threading
import urllib.error
import urllib.request
import uuid as uuidlib
from email import policy
from typing import Any

import jsonschema
import pytest

from harness.dnsserver import free_port
from harness.waiting import until
from mailflow.api import openapi
from tests.support.pipeline import ZONES, Env, module_env

KEYS: dict[str, str] = {}


def _setup(env: Env) -> None:
    # the OpenAPI document's examples are sent too: their domain goes to the test MX
    env.dns.set_zones({**ZONES, "example.net": {"MX": [(10, "mx.dest.test")]}})
    port, http = free_port(), free_port()
    env.inst.write_config("smtp.ini", f"listen = 127.0.0.1:{port}\n")
    env.inst.write_config("http.ini", f"listen = 127.0.0.1:{http}\nmax_body = 256k\n"
                          "auth_fail_delay = 0.2\n")
    for name, *extra in (("app",), ("slow", "--rate", "5"), ("anyone", "--tenant", "*")):
        made = env.inst.mailflow("apikey", "add", name, *extra)
        assert made.returncode == 0, made.stderr
        KEYS[name] = made.stdout.decode().strip()
    env.inst.start_smtpd()
    env.http_base = f"http://127.0.0.1:{http}"  # type: ignore[attr-defined]


env = module_env("http_api", setup=_setup)


def call(env: Env, path: str, body: Any = None, key: str | None = "app",
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(env.http_base + path, data=data,  # type: ignore[attr-defined]
                                     method="GET" if data is None else "POST")
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {KEYS.get(key, key)}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def tagged(n: int, tag: str) -> list[str]:
    return [f"r{i}-{tag}@dest.test" for i in range(n)]


def arrived(server: Any, rcpts: list[str]) -> list[Any]:
    wanted = set(rcpts)
    return [d for d in server.deliveries if wanted & set(d.rcpt_to)]


def test_a_template_arrives_personalised_for_each_recipient(env, mx):
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    rcpts = tagged(3, tag)
    status, answer, _ = call(env, "/api/inject/v1", {
        "envelope_sender": "bounces@sender.test",
        "content": {"from": {"email": "news@sender.test", "name": "News"},
                    "subject": "Hello {{ name }}", "text_body": "Dear {{ name }}, code {{ code }}.",
                    "html_body": "<p>Dear {{ name }}</p>",
                    "headers": {"X-Campaign-Tag": "t-{{ code }}"},
                    "attachments": [{"data": base64.b64encode(b"a,b\n").decode(), "base64": True,
                                     "content_type": "text/csv", "file_name": "r.csv"}]},
        "recipients": [{"email": r, "name": f"N{i}", "substitutions": {"name": f"<N{i}>"}}
                       for i, r in enumerate(rcpts)],
        "substitutions": {"code": "G7"}, "template_dialect": "Jinja"})
    assert (status, answer) == (200, {"success_count": 3, "fail_count": 0, "failed_recipients": [],
                                      "errors": []})
    until(lambda: len(arrived(server, rcpts)) == 3, 60)
    for i, rcpt in enumerate(rcpts):
        [delivery] = arrived(server, [rcpt])
        assert delivery.rcpt_to == [rcpt] and delivery.mail_from == "bounces@sender.test"
        msg = email.message_from_bytes(delivery.data, policy=policy.default)
        assert msg["Subject"] == f"Hello <N{i}>" and msg["X-Campaign-Tag"] == "t-G7"
        assert msg["To"].addresses[0].addr_spec == rcpt
        assert f"Dear <N{i}>, code G7." in msg.get_body(("plain",)).get_content()
        assert f"<p>Dear &lt;N{i}&gt;</p>" in msg.get_body(("html",)).get_content()  # escaped
        [attachment] = list(msg.iter_attachments())
        assert attachment.get_filename() == "r.csv" and attachment.get_content() in (b"a,b\n", "a,b\n")
        assert "from api ([127.0.0.1])" in msg["Received"]


def test_500_recipients_in_one_request_arrive_once_each(env, mx):
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    rcpts = tagged(500, tag)
    status, answer, _ = call(env, "/api/inject/v1", {
        "envelope_sender": "bulk@sender.test",
        "content": "From: bulk@sender.test\nSubject: bulk\n\nthe same for all\n",
        "recipients": [{"email": r} for r in rcpts]})
    assert status == 200 and answer["success_count"] == 500, answer
    until(lambda: len(arrived(server, rcpts)) >= 500 and not env.inst.all_files(), 120)
    got = [r for d in arrived(server, rcpts) for r in d.rcpt_to]
    assert sorted(got) == sorted(rcpts)  # each once


def test_a_retried_request_with_the_same_idempotency_key_queues_nothing_new(env, mx):
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    body = {"mail_from": "app@sender.test", "rcpt_to": [f"once-{tag}@dest.test"],
            "data": base64.b64encode(f"Subject: {tag}\r\n\r\nonce\r\n".encode()).decode()}
    first = call(env, "/api/v1/send/raw", body, headers={"Idempotency-Key": tag})
    again = call(env, "/api/v1/send/raw", body, headers={"Idempotency-Key": tag})
    assert first[0] == again[0] == 200 and first[1] == again[1] and first[1]["message_id"]
    assert again[2]["Idempotent-Replayed"] == "true"
    until(lambda: arrived(server, [f"once-{tag}@dest.test"]) and not env.inst.all_files(), 60)
    assert env.logs().count(f"queued id={first[1]['message_id']}") == 1
    other = dict(body, rcpt_to=[f"other-{tag}@dest.test"])
    status, answer, _ = call(env, "/api/v1/send/raw", other, headers={"Idempotency-Key": tag})
    assert status == 422 and answer["error"].startswith("Idempotency-Key:")
    # a different key is a different request
    assert call(env, "/api/v1/send/raw", body, headers={"Idempotency-Key": tag + "x"})[0] == 200
    until(lambda: len(arrived(server, [f"once-{tag}@dest.test"])) == 2, 60)


def test_without_a_valid_key_nothing_is_queued_and_the_refusal_is_logged(env, mx):
    mx()
    body = {"mail_from": "a@sender.test", "rcpt_to": ["x@dest.test"], "data": "U3ViamVjdDogeA0KDQp4DQo="}
    for key in (None, "mf_not-a-key", KEYS["app"][:-1]):
        status, answer, headers = call(env, "/api/v1/send/raw", body, key=key)
        assert status == 401 and "API key" in answer["error"] and headers["WWW-Authenticate"]
    env.wait(lambda: env.logs().count("http request refused client=127.0.0.1") >= 3)
    made = env.inst.mailflow("apikey", "add", "temporary")
    secret = made.stdout.decode().strip()
    assert call(env, "/api/v1/send/raw", body, key=secret)[0] == 200
    assert env.inst.mailflow("apikey", "remove", "temporary").returncode == 0
    assert call(env, "/api/v1/send/raw", body, key=secret)[0] == 401  # at once, no restart
    listed = env.inst.mailflow("apikey", "list").stdout.decode()
    assert "app tenant=- rate=-" in listed and "slow tenant=- rate=5" in listed
    assert secret not in (env.inst.config_dir / "apikeys").read_text()


def test_over_the_keys_rate_is_429_with_retry_after(env, mx):
    mx()
    body = {"envelope_sender": "a@sender.test", "content": "Subject: r\n\nr\n",
            "recipients": [{"email": f"rate{i}@dest.test"} for i in range(3)]}
    assert call(env, "/api/inject/v1", body, key="slow")[0] == 200
    status, answer, headers = call(env, "/api/inject/v1", body, key="slow")
    assert status == 429 and "5 messages a minute" in answer["error"]
    assert 1 <= int(headers["Retry-After"]) <= 60


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/inject/v1", {"envelope_sender": "a@sender.test", "content": "x"}, "recipients"),
    ("/api/inject/v1", {"envelope_sender": "not an address", "content": "x",
                        "recipients": [{"email": "a@dest.test"}]}, "envelope_sender"),
    ("/api/inject/v1", {"envelope_sender": "a@sender.test", "content": {"subject": "{{ x"},
                        "recipients": [{"email": "a@dest.test"}], "template_dialect": "Jinja"},
     "content.subject"),
    ("/api/inject/v1", {"envelope_sender": "a@sender.test", "content": "x",
                        "recipients": [{"email": "a@dest.test"}], "template_dialect": "Liquid"},
     "template_dialect"),
    ("/api/inject/v1", {"envelope_sender": "a@sender.test", "content": "x", "tenant": "acme",
                        "recipients": [{"email": "a@dest.test"}]}, "tenant"),
    ("/api/inject/v1", {"envelope_sender": "a@sender.test", "content": {"attachments": [
        {"data": "***", "base64": True}]}, "recipients": [{"email": "a@dest.test"}]},
     "content.attachments[0].data"),
    ("/api/v1/send/raw", {"mail_from": "a@sender.test", "rcpt_to": ["a@dest.test"], "data": "@@"}, "data"),
    ("/api/v1/send/raw", {"mail_from": "a@sender.test", "data": "eA=="}, "rcpt_to"),
    ("/api/v1/send/raw", [1, 2], "body"),
])
def test_bad_input_is_400_naming_the_field_and_queues_nothing(env, path, body, field):
    before = env.logs().count(" queued id=")
    status, answer, _ = call(env, path, body)
    assert status == 400 and answer["error"].startswith(f"{field}:"), answer
    assert env.logs().count(" queued id=") == before


def test_a_body_over_max_body_is_413_and_not_json_is_400(env):
    status, answer, _ = call(env, "/api/v1/send/raw", raw=b"{" + b" " * 300_000 + b"}")
    assert status == 413 and answer["error"].startswith("body:")
    status, answer, _ = call(env, "/api/v1/send/raw", raw=b"{not json")
    assert status == 400 and answer["error"].startswith("body:")


def test_a_recipient_that_fails_does_not_fail_the_others(env, mx):
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    suppressed = f"gone-{tag}@dest.test"
    assert env.inst.mailflow("suppress", "add", suppressed).returncode == 0
    good = f"good-{tag}@dest.test"
    status, answer, _ = call(env, "/api/inject/v1", {
        "envelope_sender": "a@sender.test", "content": "Subject: s\n\ns\n",
        "recipients": [{"email": suppressed}, {"email": "no-at-sign"}, {"email": good}]})
    assert status == 200 and answer["success_count"] == 1 and answer["fail_count"] == 2
    assert answer["failed_recipients"] == [suppressed, "no-at-sign"]
    until(lambda: arrived(server, [good]), 60)
    assert not arrived(server, [suppressed])


def test_the_openapi_document_describes_the_real_handlers(env, mx):
    mx()
    status, doc, _ = call(env, "/api/openapi.json", key=None)
    assert status == 200 and doc == json.loads(json.dumps(openapi.document()))
    jsonschema.validators.validator_for(doc)  # a known draft

    def schema(ref: dict[str, Any]) -> dict[str, Any]:
        return {**ref, "components": doc["components"]}

    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if method != "post":
                continue
            example = operation["requestBody"]["content"]["application/json"]["example"]
            jsonschema.validate(example, schema(operation["requestBody"]["content"]["application/json"]
                                                ["schema"]))
            for key, want in ((None, 401), ("app", 200)):
                status, answer, _ = call(env, path, example, key=key)
                assert status == want, (path, answer)
                jsonschema.validate(answer, schema(operation["responses"][str(status)]["content"]
                                                   ["application/json"]["schema"]))
            status, answer, _ = call(env, path, {})
            assert status == 400
            jsonschema.validate(answer, schema(operation["responses"]["400"]["content"]
                                               ["application/json"]["schema"]))


def test_kill_9_during_a_request_queues_nothing_of_it_and_loses_nothing_answered(env, mx):
    """A request killed in flight (messages written, no commit) leaves nothing after the
    restart; one answered 200 just before is delivered whole."""
    server = mx()
    tag = uuidlib.uuid4().hex[:8]
    answered = tagged(20, "ok" + tag)
    status, _, _ = call(env, "/api/inject/v1", {"envelope_sender": "a@sender.test",
                                               "content": "Subject: a\n\na\n",
                                               "recipients": [{"email": r} for r in answered]})
    assert status == 200
    killed = tagged(2000, "k" + tag)
    result: list[Any] = []
    big = {"envelope_sender": "a@sender.test", "content": "Subject: k\n\nk\n",
           "recipients": [{"email": r} for r in killed]}
    sender = threading.Thread(target=lambda: result.append(_try_call(env, big)), daemon=True)
    sender.start()
    incoming = env.inst.queue_dir / "incoming"
    until(lambda: any(len(list(d.iterdir())) > 50 for d in incoming.glob("n-*")), 60)
    smtpd = next(p for p in env.inst.procs if p.name == "smtpd")
    smtpd.kill9()
    sender.join(60)
    assert result and result[0] is None  # no answer
    env.inst.procs.remove(smtpd)
    env.inst.start_smtpd()
    assert not list(incoming.glob("n-*"))  # the unanswered request is gone ...
    assert not [p for p in env.inst.all_files() if f"k{tag}".encode() in _read(p)]  # ... not queued
    until(lambda: len(arrived(server, answered)) == 20, 120)
    assert not arrived(server, killed)


def _read(path: Any) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError:  # delivered and gone while we looked
        return b""


def _try_call(env: Env, body: dict[str, Any]) -> int | None:
    try:
        return call(env, "/api/inject/v1", body)[0]
    except (OSError, urllib.error.URLError):
        return None


def test_dsn_options_through_the_api_reach_the_next_hop_and_bad_ones_are_400(env, mx):
    """The raw endpoint's dsn object: checked (400 naming it), kept, passed to a next hop that
    offers DSN (issue 29 item 1)."""
    server = mx(dsn=True)
    tag = uuidlib.uuid4().hex[:8]
    rcpt = f"d-{tag}@dest.test"
    data = base64.b64encode(f"Subject: {tag}\r\n\r\nhi\r\n".encode()).decode()
    status, answer, _ = call(env, "/api/v1/send/raw", {"mail_from": "a@sender.test", "rcpt_to": [rcpt],
                                                      "data": data, "dsn": {"ret": "ALL"}})
    assert status == 400 and answer["error"].startswith("dsn: ") and "RET" in answer["error"]
    status, answer, _ = call(env, "/api/v1/send/raw", {
        "mail_from": "a@sender.test", "rcpt_to": [rcpt], "data": data,
        "dsn": {"ret": "HDRS", "envid": f"api-{tag}", "notify": ["FAILURE"],
                "orcpt": {rcpt: f"rfc822;{rcpt}"}}})
    assert status == 200, answer
    [seen] = env.wait(lambda: arrived(server, [rcpt]), 60)
    assert "RET=HDRS" in seen.mail_options and f"ENVID=API-{tag.upper()}" in seen.mail_options
    assert "NOTIFY=FAILURE" in seen.rcpt_options
