import pytest

from mailflow.config.schedule import DEFAULT_INTERVALS, format_intervals, parse_intervals


def test_haraka_syntax():
    assert parse_intervals("1m, 5m*2, 1h*3") == [60, 300, 300, 3600, 3600, 3600]
    assert parse_intervals("5s,1D") == [5, 86400]
    assert parse_intervals(" 10 s * 2 ") == [10, 10]


def test_none_bounces_at_once():
    assert parse_intervals("none") == []
    assert parse_intervals("NONE") == []


def test_defaults_are_havakas_doubling_schedule():
    assert DEFAULT_INTERVALS == (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
                                 131072)
    assert parse_intervals(format_intervals(DEFAULT_INTERVALS)) == list(DEFAULT_INTERVALS)


@pytest.mark.parametrize("text,why", [
    ("4s", "minimum"), ("60 min", "cannot read"), ("1m,,2m", "cannot read"), ("", "empty"),
    ("1m*0", "zero"), ("-5m", "cannot read")])
def test_errors_name_the_value(text, why):
    with pytest.raises(ValueError, match=why):
        parse_intervals(text)
