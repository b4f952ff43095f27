"""What a reply's class makes mailflow do: ``classify.ini [actions]``.

``suppress`` (default ``InvalidRecipient, BadDomain``): a permanent refusal of a recipient
of these classes, by the receiver itself, puts the address on the suppression list
(mailflow's own conclusions -- NXDOMAIN from a broken resolver -- never do).
``bounce_now``: a temporary failure of these classes bounces at once, without the retry
schedule.  ``retry.<Class> = <intervals>``: a class's own schedule, in place of
outbound.ini's ``temp_fail_intervals`` (``retry.QuotaIssues = 1h, 2h, 4h, 8h, 8h``: a full
mailbox retried for a day).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailflow.classify.classes import CLASSES
from mailflow.config.files import ConfigError, parse_list, read_ini, unknown
from mailflow.config.schedule import parse_intervals

DEFAULT_SUPPRESS = frozenset({"InvalidRecipient", "BadDomain"})


@dataclass(frozen=True)
class Actions:
    suppress: frozenset[str] = DEFAULT_SUPPRESS
    bounce_now: frozenset[str] = frozenset()
    retry: dict[str, list[int]] = field(default_factory=dict)


def load(path: Path) -> Actions:
    ini = read_ini(path)
    keys = ini.sections.get("actions", {})
    values: dict[str, object] = {}
    retry: dict[str, list[int]] = {}
    for key, raw in keys.items():
        if key.startswith("retry."):
            cls = key.removeprefix("retry.")
            if cls not in CLASSES:
                raise ConfigError(path, raw.line, f"{key}: {cls!r} is not a class ({', '.join(CLASSES)})")
            try:
                retry[cls] = parse_intervals(raw.text)
            except ValueError as exc:
                raise ConfigError(path, raw.line, f"{key} {exc}") from None
        elif key in ("suppress", "bounce_now"):
            names = parse_list(raw.text)
            wrong = [n for n in names if n not in CLASSES]
            if wrong:
                raise ConfigError(path, raw.line,
                                  f"{key}: {wrong[0]!r} is not a class ({', '.join(CLASSES)})")
            values[key] = frozenset(names)
        else:
            raise ConfigError(path, raw.line,
                              unknown("key", key, ("suppress", "bounce_now", "retry.<Class>")))
    return Actions(retry=retry, **values)  # type: ignore[arg-type]
