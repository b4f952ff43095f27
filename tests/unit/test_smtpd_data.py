"""The block-wise DATA reader keeps aiosmtpd's line-wise rules, however the bytes arrive."""

import asyncio
import random

import pytest

from mailflow.smtpd.data import LINE_LIMIT, STREAM_LIMIT, read_data


def reference(stream: bytes, size_limit: int | None):
    """aiosmtpd's rules, line by line, in its order (a text over its stream limit overruns
    before it is counted; then the size; then a line just over the limit): (content or
    None, refused, rest of the stream).  tests/unit/test_data_differential.py holds these
    to stock aiosmtpd itself."""
    lines, pos, received, refused = [], 0, 0, None
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        pos = end
        if line == b".\r\n":
            break
        if refused is None:
            if len(line) - 2 > STREAM_LIMIT:
                refused = "too_long"
            else:
                received += len(line)
                if size_limit and received > size_limit:
                    refused = "too_much"
                elif len(line) > LINE_LIMIT:
                    refused = "too_long"
        lines.append(line[1:] if line.startswith(b".") else line)
    if refused:
        return None, refused, stream[pos:]
    return b"".join(lines), None, stream[pos:]


#: the bodies the tests read, closed after each test (a Body is a temporary file)
OPENED: list = []


@pytest.fixture(autouse=True)
def _close_bodies():
    yield
    while OPENED:
        OPENED.pop().file.close()


def run(stream: bytes, *, size_limit=None, limit=64 * 1024, chunks=None):
    async def go():
        reader = asyncio.StreamReader(limit=limit)
        for chunk in chunks or [stream]:
            reader.feed_data(chunk)
        reader.feed_eof()
        data = await read_data(reader, size_limit)
        OPENED.append(data.body)
        return data, await reader.read()
    return asyncio.run(go())


def test_plain_message_and_what_follows_stays_in_the_stream():
    data, rest = run(b"Subject: s\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    assert data.content == b"Subject: s\r\n\r\nhello\r\n" and rest == b"QUIT\r\n"


def test_empty_message():
    data, rest = run(b".\r\nQUIT\r\n")
    assert data.content == b"" and rest == b"QUIT\r\n"


def test_dot_stuffing_and_lines_ending_in_a_dot():
    data, _ = run(b"..leading\r\nend.\r\n..\r\nlast.\r\n.\r\n")
    assert data.content == b".leading\r\nend.\r\n.\r\nlast.\r\n"


@pytest.mark.parametrize("sequence", [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"])
def test_only_crlf_dot_crlf_ends_the_data(sequence):
    stream = b"hello" + sequence + b"MAIL FROM:<evil@x>\r\n.\r\nNEXT"
    data, rest = run(stream)
    assert b"MAIL FROM:<evil@x>" in data.content and rest == b"NEXT"
    assert data.content == reference(stream, None)[0]


def test_size_limit_counts_bytes_as_received_and_reads_to_the_end():
    body = b"x" * 98 + b"\r\n"
    data, rest = run(body * 10 + b".\r\nQUIT\r\n", size_limit=999)
    assert data.too_much and not data.content and rest == b"QUIT\r\n"
    data, _ = run(body * 10 + b".\r\n", size_limit=1000)
    assert data.content == body * 10


def test_a_line_over_1001_bytes_is_refused():
    assert run(b"x" * 999 + b"\r\n.\r\n")[0].content == b"x" * 999 + b"\r\n"
    assert run(b"x" * 1000 + b"\r\n.\r\n")[0].too_long


def test_same_as_line_by_line_whatever_the_chunking_and_buffer_limit():
    rnd = random.Random(5321)
    pieces = [b"a", b".", b"\r\n", b"\r", b"\n", b"..", b"x" * 300, b".\r\n", b"\r\n.\n", b"z" * 1200]
    for _ in range(300):
        body = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 40)))
        stream = body + b"\r\n.\r\nRSET\r\n" if not body.endswith(b"\r\n") else body + b".\r\nRSET\r\n"
        want, refused, rest = reference(stream, size_limit=4000)
        cuts = sorted(rnd.sample(range(1, len(stream)), min(len(stream) - 1, rnd.randint(0, 8))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        data, left = run(stream, size_limit=4000, limit=rnd.choice([16, 64, 1001, 65536]), chunks=chunks)
        assert left == rest
        if refused:
            assert getattr(data, refused), stream
        else:
            assert data.content == want and not (data.too_much or data.too_long), stream


def test_a_line_at_the_limit_split_inside_its_crlf_is_not_too_long():
    line = b"x" * 999 + b"\r\n"
    data, _ = run(line + b".\r\n", chunks=[line[:-1], line[-1:] + b".\r\n"], limit=16)
    assert data.content == line and not data.too_long


def test_a_large_body_goes_to_disk_and_a_small_one_stays_in_memory():
    big = (b"y" * 998 + b"\r\n") * 2000  # 2 MB
    data, _ = run(big + b".\r\n")
    assert not data.body.in_memory and data.body.size == len(big) and data.content == big
    data, _ = run(b"small\r\n.\r\n")
    assert data.body.in_memory and data.content == b"small\r\n"
