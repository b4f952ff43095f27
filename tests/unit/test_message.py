import re

import pytest

from mailflow import message as m


def test_every_line_ending_becomes_crlf():
    assert m.normalise_eol(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"


def test_smuggled_end_of_data_is_stuffed_after_normalising():
    data = m.dot_stuff(m.normalise_eol(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<a@b.c>\r\n"))
    assert b"\r\n.\r\n" not in data
    assert b"\r\n..\r\n" in data


def test_dot_stuffing_round_trip():
    data = b".leading\r\n..two\r\nplain\r\n"
    assert m.dot_stuff(data) == b"..leading\r\n...two\r\nplain\r\n"
    assert m.dot_unstuff(m.dot_stuff(data)) == data


def test_headers_are_found_case_insensitively_and_unfolded():
    data = b"SUBJECT: a\r\n  folded\r\nmessage-id: <x@y>\r\n\r\nBody: not a header\r\n"
    assert m.header_names(data) == {"subject", "message-id"}
    assert m.header_value(data, "Subject") == "a folded"
    assert m.header_value(data, "body") is None


def test_missing_message_id_and_date_are_added():
    out = m.add_missing_headers(b"Subject: s\r\n\r\nbody\r\n", msgid="U1", me="h.example")
    assert out.startswith(b"Message-Id: <U1@h.example>\r\nDate: ")
    assert out.endswith(b"Subject: s\r\n\r\nbody\r\n")


def test_present_headers_are_kept_but_empty_message_id_replaced():
    data = b"Message-Id: <>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n"
    out = m.add_missing_headers(data, msgid="U2", me="h")
    assert out.count(b"Date:") == 1
    assert out.startswith(b"Message-Id: <U2@h>\r\n")


def test_single_line_folds_crlf():
    assert m.single_line("a\r\nInjected: yes\tb") == "a Injected: yes b"


@pytest.mark.parametrize("data", [
    b"", b".", b"a", b"a\r\n", b"\n\r", b"a\n\rb", b"\r\r\n\n", b"x\r\n.\ny", b"x\r.y\r\n",
    b".a\r\n", b"a\r\n..b\r\n", b"a\rb\nc\r\nd", b"\r\n" * 3 + b".",
])
def test_the_fast_paths_give_what_the_regular_expressions_give(data):
    """CRLF-only input skips the line-ending rewrite, dot-free input the stuffing (issue 14)."""
    assert m.normalise_eol(data) == _normalised(data)
    assert m.dot_stuff(data) == re.sub(rb"(?m)^\.", b"..", data)
    assert m.dot_stuff(m.normalise_eol(data)) == re.sub(rb"(?m)^\.", b"..", _normalised(data))


def _normalised(data: bytes) -> bytes:
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data + b"\r\n" if data and not data.endswith(b"\r\n") else data
