"""The API's OpenAPI 3.1 description, served at ``GET /api/openapi.json``.

Written here by hand from the handlers' own rules (mailflow/api/requests.py); a test
sends the documented examples to the real listener and checks every answer against the
schemas below, so the two cannot drift apart unseen.
"""

from __future__ import annotations

from typing import Any

_ADDRESS = {"type": "string", "description": "an RFC 5321 address, local@domain"}
_NAMED = {"oneOf": [_ADDRESS, {"type": "object", "required": ["email"], "properties": {
    "email": _ADDRESS, "name": {"type": "string"}}}]}
_LABEL = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_DSN = {"type": "object", "description": "what the sender wants to be told (RFC 3461, as SMTP's "
        "RET, ENVID, NOTIFY and ORCPT)", "additionalProperties": False, "properties": {
            "ret": {"enum": ["FULL", "HDRS"]}, "envid": {"type": "string", "maxLength": 100},
            "notify": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                "enum": ["NEVER", "SUCCESS", "FAILURE", "DELAY"]}}]},
            "orcpt": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "recipient -> its original address (rfc822;…)"}}}
_ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string", "description": "the field, a colon, and what is wrong"}}}

INJECT_EXAMPLE: dict[str, Any] = {
    "envelope_sender": "bounces@example.com",
    "content": {"from": {"email": "news@example.com", "name": "Example News"},
                "subject": "Hello {{ name }}",
                "text_body": "Hi {{ name }}, your code is {{ code }}.",
                "html_body": "<p>Hi {{ name }}, your code is <b>{{ code }}</b>.</p>"},
    "recipients": [{"email": "alice@example.net", "name": "Alice",
                    "substitutions": {"name": "Alice", "code": "A-1"}}],
    "substitutions": {"code": "none"},
    "template_dialect": "Jinja",
}
RAW_EXAMPLE: dict[str, Any] = {
    "mail_from": "app@example.com", "rcpt_to": ["bob@example.net"],
    "data": "U3ViamVjdDogaGVsbG8NCg0KZmlyc3QgbWVzc2FnZQ0K",
}


def _errors(*codes: int) -> dict[str, Any]:
    why = {400: "a field is missing or wrong; nothing was queued",
           401: "no API key, or a wrong one (answered after a delay)",
           409: "a request with the same Idempotency-Key is being queued now",
           413: "the body is larger than http.ini max_body",
           422: "the Idempotency-Key was used before with another body",
           429: "over the key's messages per minute; Retry-After says when to try again",
           503: "the queue cannot be written now; nothing was queued"}
    return {str(c): {"description": why[c], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for c in codes}


_HEADERS = [{"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "the same key and body within 24 hours queue nothing new and get "
             "the first answer again", "schema": {"type": "string", "maxLength": 255}}]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailflow HTTP injection API", "version": "1",
                 "description": "Queue mail over HTTP as over SMTP: a 200 means every accepted "
                 "message is on disk and fsync'd; a request is queued whole or not at all."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/inject/v1": {"post": {
                "summary": "One message per recipient, from a message or its parts, with templates",
                "parameters": _HEADERS,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/InjectRequest"},
                    "example": INJECT_EXAMPLE}}},
                "responses": {"200": {"description": "every accepted recipient's message is queued",
                                      "content": {"application/json": {"schema": {
                                          "$ref": "#/components/schemas/InjectAnswer"}}}},
                              **_errors(400, 401, 409, 413, 422, 429, 503)}}},
            "/api/v1/send/raw": {"post": {
                "summary": "One message you built, to every recipient",
                "parameters": _HEADERS,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RawRequest"}, "example": RAW_EXAMPLE}}},
                "responses": {"200": {"description": "queued; the id SMTP would give",
                                      "content": {"application/json": {"schema": {
                                          "$ref": "#/components/schemas/RawAnswer"}}}},
                              **_errors(400, 401, 409, 413, 422, 429, 503)}}},
            "/api/openapi.json": {"get": {
                "summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a key from `mailflow apikey add NAME`"}},
            "schemas": {
                "Error": _ERROR,
                "InjectRequest": {"type": "object", "required": ["envelope_sender", "content", "recipients"],
                                  "properties": {
                    "envelope_sender": {"type": "string", "description": "the MAIL FROM address; "
                                        "'' for none (bounces are not returned)"},
                    "content": {"oneOf": [
                        {"type": "string", "description": "a whole RFC 5322 message"},
                        {"$ref": "#/components/schemas/Builder"}]},
                    "recipients": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {
                        "type": "object", "required": ["email"], "properties": {
                            "email": _ADDRESS, "name": {"type": "string"},
                            "substitutions": {"type": "object"}}}},
                    "substitutions": {"type": "object", "description": "for every recipient; a "
                                      "recipient's own win"},
                    "template_dialect": {"enum": ["Static", "Jinja"], "default": "Static"},
                    "tenant": {**_LABEL, "description": "only with a key made with --tenant '*'"},
                    "campaign": _LABEL, "dsn": _DSN}},
                "Builder": {"type": "object", "properties": {
                    "from": _NAMED, "reply_to": _NAMED, "subject": {"type": "string"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "text_body": {"type": "string"}, "html_body": {"type": "string"},
                    "attachments": {"type": "array", "items": {
                        "type": "object", "required": ["data"], "properties": {
                            "data": {"type": "string"}, "base64": {"type": "boolean", "default": False},
                            "content_type": {"type": "string", "default": "application/octet-stream"},
                            "file_name": {"type": "string"},
                            "content_id": {"type": "string", "description": "inline, for cid: in "
                                           "the HTML body"}}}}}},
                "InjectAnswer": {"type": "object", "required": ["success_count", "fail_count",
                                                                "failed_recipients", "errors"],
                                 "properties": {
                    "success_count": {"type": "integer", "minimum": 0},
                    "fail_count": {"type": "integer", "minimum": 0},
                    "failed_recipients": {"type": "array", "items": {"type": "string"}},
                    "errors": {"type": "array", "items": {"type": "string"}}}},
                "RawRequest": {"type": "object", "required": ["mail_from", "rcpt_to", "data"],
                               "properties": {
                    "mail_from": {"type": "string"},
                    "rcpt_to": {"type": "array", "minItems": 1, "items": _ADDRESS},
                    "data": {"type": "string", "contentEncoding": "base64",
                             "description": "the RFC 5322 message"}, "dsn": _DSN}},
                "RawAnswer": {"type": "object", "required": ["message_id"], "properties": {
                    "message_id": {"type": ["string", "null"], "description": "null when a "
                                   "queue_outbound receiver took the message"},
                    "failed_recipients": {"type": "array", "items": {"type": "string"}},
                    "errors": {"type": "array", "items": {"type": "string"}}}},
            },
        },
    }
