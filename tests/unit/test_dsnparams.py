"""RFC 3461's parameters: xtext both ways, each parameter checked, the defaults of NOTIFY,
and what goes on to a next hop -- kept through the queue entry's notes."""

from __future__ import annotations

import pytest

from mailflow.wire import dsnparams
from mailflow.wire.dsnparams import Dsn, ParamError, Recipient


@pytest.mark.parametrize("plain", ["user@example.com", "a+b=c@x", "sp ace\u00e9", ""])
def test_xtext_round_trips(plain):
    encoded = dsnparams.xtext_encode(plain)
    assert all("!" <= c <= "~" for c in encoded) and "=" not in encoded
    assert dsnparams.xtext_decode(encoded) == plain


@pytest.mark.parametrize("bad", ["a=b", "+2", "+zz", "a b", "+2b"])  # hex digits are upper case
def test_malformed_xtext_is_refused(bad):
    with pytest.raises(ParamError):
        dsnparams.xtext_decode(bad)


def test_mail_and_rcpt_parameters_are_read_and_checked():
    assert dsnparams.mail({"RET": "hdrs", "ENVID": "QQ+2B1"}) == ("HDRS", "QQ+1")
    assert dsnparams.rcpt({"NOTIFY": "success,Failure", "ORCPT": "rfc822;A+2BB@X"}) == \
        Recipient(("SUCCESS", "FAILURE"), "rfc822;A+B@X")
    for bad in ({"RET": "ALL"}, {"ENVID": "x" * 101}, {"ENVID": ""}):
        with pytest.raises(ParamError):
            dsnparams.mail(bad)
    for bad in ({"NOTIFY": "NEVER,DELAY"}, {"NOTIFY": "DELAY,DELAY"}, {"NOTIFY": ""},
                {"ORCPT": "user@x"}, {"ORCPT": "rfc822;"}, {"ORCPT": "rfc 822;a@b"}):
        with pytest.raises(ParamError):
            dsnparams.rcpt(bad)
    with pytest.raises(ParamError, match="given twice"):
        dsnparams.split(["NOTIFY=NEVER", "notify=SUCCESS"], dsnparams.RCPT_KEYS)


def test_notify_defaults_to_failure_and_delay():
    assert Recipient().wants("FAILURE") and Recipient().wants("DELAY")
    assert not Recipient().wants("SUCCESS")
    assert not Recipient(("NEVER",)).wants("FAILURE")
    assert Recipient(("SUCCESS",)).wants("SUCCESS") and not Recipient(("SUCCESS",)).wants("DELAY")


def test_kept_in_the_notes_and_passed_on_in_xtext():
    dsn = Dsn("HDRS", "id=1", {"u@x": Recipient(("FAILURE",), "rfc822;U+V@X")})
    again = Dsn.from_notes({dsnparams.DSN_NOTE: dsn.to_note()})
    assert again == dsn and Dsn.from_notes({}) is None
    assert again.mail_options() == ["RET=HDRS", "ENVID=id+3D1"]
    assert again.rcpt_options("u@x") == ["NOTIFY=FAILURE", "ORCPT=rfc822;U+2BV@X"]
    assert again.rcpt_options("other@x") == []


def test_the_object_form_of_send_email_and_the_http_api():
    asked = dsnparams.from_api({"ret": "hdrs", "envid": "id 1", "notify": ["SUCCESS", "FAILURE"],
                                "orcpt": {"u@x": "rfc822;U@X", "v@x": "V@X"}}, ["u@x", "v@x", "w@x"])
    assert (asked.ret, asked.envid) == ("HDRS", "id 1")
    assert asked.rcpt("u@x") == Recipient(("SUCCESS", "FAILURE"), "rfc822;U@X")
    assert asked.rcpt("v@x").orcpt == "rfc822;V@X" and asked.rcpt("w@x").notify == ("SUCCESS", "FAILURE")
    for bad, field in (({"ret": "ALL"}, "RET"), ({"envid": "caf\u00e9"}, "dsn.envid"),
                       ({"notify": "NEVER,SUCCESS"}, "NOTIFY"), ({"when": 1}, "dsn.when"),
                       ({"orcpt": ["u@x"]}, "dsn.orcpt"), ("NEVER", "dsn:")):
        with pytest.raises(ParamError, match=field):
            dsnparams.from_api(bad, ["u@x"])


def test_a_letter_carries_them_to_another_host_and_a_forged_one_is_dropped():
    from mailflow.wire.payloads import Letter
    dsn = Dsn("FULL", "e1", {"u@x": Recipient(("NEVER",), "rfc822;u@x")})
    letter = Letter("n", "a@b", ("u@x",), b"hi", dsn)
    assert Letter.from_json(letter.to_json()).dsn == dsn
    forged = {**letter.to_json(), "dsn": {"ret": "ALL", "rcpt": {}}}
    assert Letter.from_json(forged).dsn is None
    other = {**letter.to_json(), "dsn": {"rcpt": {"someone@else": {"notify": ["SUCCESS"]}}}}
    assert Letter.from_json(other).dsn == Dsn()  # only the letter's own recipients
