"""8-bit parts made 7-bit for a next hop without 8BITMIME: text as quoted-printable, the rest
as base64, everything else byte for byte as it was."""

from __future__ import annotations

import email
import email.policy

from mailflow import sevenbit

MIXED = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"bb\"\r\n"
         b"X-Folded: one\r\n two\r\n\r\npreamble\r\n--bb\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: 8bit\r\n\r\nh\xc3\xa9 l\xc3\xa0\r\n--bb\r\n"
         b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(128, 160)) + b"\r\n--bb\r\n"
         b"Content-Type: text/plain\r\n\r\nplain ascii part\r\n--bb--\r\n")


def test_each_8bit_part_is_re_encoded_and_decodes_to_what_it_was():
    out = sevenbit.convert(MIXED)
    assert out.isascii()
    assert out.startswith(b"Subject: x\r\nMIME-Version: 1.0\r\n")
    assert b"X-Folded: one\r\n two\r\n" in out  # headers as they came: nothing refolded
    parts = [p for p in email.message_from_bytes(out, policy=email.policy.default).walk()
             if not p.is_multipart()]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "base64", None]
    assert parts[0].get_payload(decode=True).rstrip(b"\r\n") == "hé là".encode()
    assert parts[1].get_payload(decode=True).rstrip(b"\r\n") == bytes(range(128, 160))
    assert b"\r\nplain ascii part\r\n" in out


def test_nothing_to_do_is_the_same_bytes():
    ascii_only = b"Subject: x\r\n\r\nhello\r\n"
    assert sevenbit.convert(ascii_only) is ascii_only
    utf8_headers = "Subject: café\r\n\r\nhé\r\n".encode()  # RFC 6532: needs SMTPUTF8 instead
    assert sevenbit.convert(utf8_headers) == utf8_headers
    encoded = b"Content-Transfer-Encoding: base64\r\n\r\n" + b"\xff\r\n"  # mislabelled: left alone
    assert sevenbit.convert(encoded) == encoded
