import re

import pytest

from mailflow import message as m
from mailflow.message import BLOCK, FileMessage, dot_stuff, normalise_eol, wire_blocks


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


# ── the wire form, made as a message is sent (issue 23 items 4 and 12) ──────────────────

WIRE_CORPUS = [
    b"Subject: a\r\n\r\nplain\r\n",
    b"Subject: b\r\n\r\n.lead\r\n..two\r\n.\r\nafter\r\n",
    b"bare\nlf\n.\nand\rcr\r.\r\r\nmixed\r\n",
    b".first line dotted\r\nno final newline",
    b"ends in cr\r",
    b"",
]


def _expected(raw: bytes) -> bytes:
    return dot_stuff(normalise_eol(raw)) if raw else b""


@pytest.mark.parametrize("raw", WIRE_CORPUS)
def test_the_wire_form_is_the_same_however_the_message_is_cut(raw):
    stored = dot_stuff(normalise_eol(raw)) if raw else b""
    for size in range(1, 19):
        raw_chunks = [raw[i:i + size] for i in range(0, len(raw), size)]
        stored_chunks = [stored[i:i + size] for i in range(0, len(stored), size)]
        assert b"".join(wire_blocks(raw_chunks, stuffed=False)) == _expected(raw)
        assert b"".join(wire_blocks(stored_chunks, stuffed=True)) == _expected(raw)


def test_a_stored_message_with_a_lone_dot_never_ends_data_early():
    """A queue file edited by hand, or a corrupt one: its lone ``.`` line stays in the body."""
    wire = b"".join(wire_blocks([b"a\r\n.\r\nMAIL FROM:<x@y>\r\n"], stuffed=True))
    assert b"\r\n.\r\n" not in b"\r\n" + wire


def test_a_file_message_is_read_in_blocks(tmp_path):
    path = tmp_path / "m"
    body = (b"x" * 100 + b"\r\n") * 2000
    path.write_bytes(b"HEAD" + body)
    message = FileMessage(path, 4)
    assert message.size == len(body) and not message.eight_bit()
    assert max(len(b) for b in message.blocks()) <= BLOCK
    assert b"".join(wire_blocks(message.blocks(), stuffed=True)) == body


def test_taken_headers_are_removed_with_their_continuation_lines_and_nothing_else():
    from mailflow.message import take_headers
    data = (b"From: a@x\r\nX-Tenant: acme\r\nX-Campaign: spring\r\n  sale\r\nSubject: s\r\n"
            b"X-Tenant: second\r\n\r\nX-Tenant: in the body\r\n")
    out, found = take_headers(data, ("x-tenant", "x-campaign"))
    assert out == b"From: a@x\r\nSubject: s\r\n\r\nX-Tenant: in the body\r\n"
    assert found == {"x-tenant": "acme", "x-campaign": "spring sale"}
    same = b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n"
    assert take_headers(same, ("x-tenant",)) == (same, {})


def test_a_body_on_disk_loses_the_header_and_keeps_every_other_byte():
    from mailflow.message import Body, take_body_headers
    body = Body(spill_at=1024)
    rest = b"line\r\n" * 50_000
    body.write(b"X-Tenant: acme\r\nSubject: big\r\n\r\n" + rest)
    assert not body.in_memory
    taken, found = take_body_headers(body, ("x-tenant",))
    assert found == {"x-tenant": "acme"} and taken.read() == b"Subject: big\r\n\r\n" + rest
    taken.close()
    untouched = Body()
    untouched.write(b"Subject: s\r\n\r\nx\r\n")
    assert take_body_headers(untouched, ("x-tenant",)) == (untouched, {})
    untouched.close()


# ── shortcuts over whole bodies, held to the long way on random bytes ─────────────────────

def _random_lines(rnd, pieces=(b"\r\n", b"\r", b"\n", b".", b"..", b"x", b"X-Tenant: t", b"a" * 70)):
    return b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))


def test_a_stored_block_sent_as_it_is_is_what_unstuffing_and_stuffing_again_give():
    """``_wire`` hands a CRLF block with no dot-led line on untouched: only when the long way
    (normalise, unstuff, stuff) would give the same bytes."""
    import random
    rnd = random.Random(26)
    for _ in range(20_000):
        lines = _random_lines(rnd)
        long_way = dot_stuff(m.dot_unstuff(normalise_eol(lines)))
        assert m._wire(lines, stuffed=True) == long_way, lines


def test_the_header_section_is_looked_at_without_normalising_the_body():
    """``take_body_headers`` leaves a body alone, on its quick look, only where reading it
    the long way finds none of the names either."""
    import random
    rnd = random.Random(27)
    for _ in range(5_000):
        raw = _random_lines(rnd) + b"\r\n\r\n" + _random_lines(rnd)
        long_way = m.take_headers(m.normalise_eol(raw), ("x-tenant",))[1]
        if not m._may_hold(raw, ("x-tenant",)):
            assert long_way == {}, raw
        body = m.Body()
        body.write(raw)
        taken, found = m.take_body_headers(body, ("x-tenant",))
        taken.close()
        body.close()
        assert found == long_way, raw


def test_line_endings_and_dots_are_judged_as_the_plain_counts_and_replacements_judge_them():
    """``crlf_only``, ``dot_stuff`` and ``dot_unstuff`` search with regular expressions for
    speed; counting and replacing are the reference, on random CR, LF, dot and text."""
    import random
    rnd = random.Random(2026)
    for _ in range(50_000):
        data = b"".join(rnd.choice([b"\r", b"\n", b"\r\n", b".", b"a"]) for _ in range(rnd.randint(0, 10)))
        crlf = data.count(b"\r\n")
        assert m.crlf_only(data) == (data.count(b"\r") == crlf == data.count(b"\n")), data
        assert dot_stuff(data) == re.sub(rb"(?m)^\.", b"..", data), data
        assert m.dot_unstuff(data) == (data[1:] if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n")
