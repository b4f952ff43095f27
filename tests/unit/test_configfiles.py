from pathlib import Path

import pytest

from mailflow.config.files import ConfigError, parse_bool, read_ini, read_lines


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "x.ini"
    p.write_text(text)
    return p


def test_keys_before_a_section_belong_to_main(tmp_path):
    ini = read_ini(write(tmp_path, "a = 1\n; comment\n# comment\n[other]\nb = 2\n[main]\nc=3\n"))
    assert {k: v.text for k, v in ini.section("main").items()} == {"a": "1", "c": "3"}
    assert ini.section("other")["b"].text == "2"
    assert ini.section("main")["c"].line == 7


def test_haraka_list_syntax(tmp_path):
    ini = read_ini(write(tmp_path, "hosts[] = a\nhosts[] = b\n"))
    assert ini.section("main")["hosts"].items == ["a", "b"]
    assert ini.section("main")["hosts"].text == "a,b"


def test_quotes_are_stripped(tmp_path):
    assert read_ini(write(tmp_path, 'x = "a b"\n')).section("main")["x"].text == "a b"


def test_missing_file_is_empty(tmp_path):
    assert read_ini(tmp_path / "nope.ini").section("main") == {}


@pytest.mark.parametrize("text,line", [("a = 1\nnot a key\n", 2), ("[broken\n", 1), ("= x\n", 1)])
def test_syntax_error_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        read_ini(path)
    assert str(exc.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("text,value", [
    ("true", True), ("yes", True), ("1", True), ("false", False), ("No", False), ("0", False)])
def test_booleans(text, value):
    assert parse_bool(text) is value


def test_bad_boolean():
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_list_file(tmp_path):
    p = tmp_path / "l"
    p.write_text("# c\n\n10.0.0.1  # trailing\n::1\n")
    assert read_lines(p) == [(3, "10.0.0.1"), (4, "::1")]
