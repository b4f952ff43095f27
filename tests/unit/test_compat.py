"""The private library names mailflow relies on are where it expects them (issue 10, item 6)."""

from __future__ import annotations

import aiosmtpd.smtp
import pytest

from mailflow.runtime import compat


def test_every_private_name_relied_on_is_there():
    found = compat.problems()
    assert found == [], "\n".join(["a library changed what mailflow relies on:", *found])


def test_a_missing_name_is_reported_in_one_clear_line(monkeypatch):
    monkeypatch.delattr(aiosmtpd.smtp.SMTP, "_set_post_data_state")
    [line] = compat.problems()
    assert line.startswith("aiosmtpd 1.4.")
    assert "aiosmtpd.smtp.SMTP._set_post_data_state is gone" in line


def test_a_changed_signature_is_reported(monkeypatch):
    async def smtp_DATA(self, arg, extra):  # noqa: N802
        pass

    monkeypatch.setattr(aiosmtpd.smtp.SMTP, "smtp_DATA", smtp_DATA)
    [line] = compat.problems()
    assert "SMTP.smtp_DATA takes (self, arg, extra), not (self, arg)" in line


def test_the_check_stops_a_process(monkeypatch, capsys):
    monkeypatch.delattr(aiosmtpd.smtp.SMTP, "_handle_client")
    with pytest.raises(SystemExit) as exc:
        compat.check_or_exit()
    assert exc.value.code == 2
    assert "_handle_client is gone" in capsys.readouterr().err
