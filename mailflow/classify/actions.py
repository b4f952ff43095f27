"""What a reply's class makes mailflow do: ``classify.ini [actions]``.

``suppress`` (default ``InvalidRecipient, BadDomain``): a permanent refusal of a recipient
of these classes, by the receiver itself, puts the address on the suppression list
(mailflow's own conclusions -- NXDOMAIN from a broken resolver -- never do).
``bounce_now``: a temporary failure of these classes bounces at once, without the retry
schedule.  ``retry.<Class> = <intervals>``: a class's own schedule, in place of
outbound.ini's ``temp_fail_intervals`` (``retry.QuotaIssues = 1h, 2h, 4h, 8h, 8h``: a full
mailbox retried for a day).  ``backoff``, ``backoff_for``, ``backoff_floor``, ``suspend``,
``suspend_after`` (``3 in 10m``) and ``suspend_for``: what a site's replies asking to slow
down do (mailflow/relay/backoff.py ``Policy``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mailflow.classify.classes import CLASSES
from mailflow.config.files import ConfigError, Value, parse_list, read_ini, unknown
from mailflow.config.schedule import parse_duration, parse_intervals
from mailflow.config.settings import positive_int

DEFAULT_SUPPRESS = frozenset({"InvalidRecipient", "BadDomain"})


@dataclass(frozen=True)
class Policy:
    """``classify.ini [actions]``'s backoff and suspend keys (mailflow/relay/backoff.py)."""

    classes: frozenset[str] = frozenset({"RateLimited", "TooManyConnections", "ReputationBlock"})
    period: int = 1800  #: backoff_for (s)
    floor: int = 1  #: backoff_floor: messages a minute, at least
    suspend: frozenset[str] = frozenset({"SpamBlock"})
    suspend_after: int = 3  #: this many suspend-class replies ...
    suspend_window: int = 600  #: ... within this long (s) ...
    suspend_for: int = 600  #: ... stop the source sending to the site this long (s)

    @property
    def on(self) -> bool:
        return bool(self.classes or self.suspend)


@dataclass(frozen=True)
class Actions:
    suppress: frozenset[str] = DEFAULT_SUPPRESS
    bounce_now: frozenset[str] = frozenset()
    retry: dict[str, list[int]] = field(default_factory=dict)
    backoff: Policy = Policy()


KEYS = ("suppress", "bounce_now", "retry.<Class>", "backoff", "backoff_for", "backoff_floor",
        "suspend", "suspend_after", "suspend_for")
_AFTER = re.compile(r"^\s*(\d+)\s*(?:in\s+(\S+))?\s*$")


def _classes(path: Path, key: str, raw: Value) -> frozenset[str]:
    names = parse_list(raw.text)
    wrong = [n for n in names if n not in CLASSES]
    if wrong:
        raise ConfigError(path, raw.line, f"{key}: {wrong[0]!r} is not a class ({', '.join(CLASSES)})")
    return frozenset(names)


def _policy(path: Path, keys: dict[str, Value]) -> Policy:
    """The backoff and suspend keys, each checked where it stands."""
    values: dict[str, object] = {}
    for key, raw in keys.items():
        try:
            if key in ("backoff", "suspend"):
                values["classes" if key == "backoff" else key] = _classes(path, key, raw)
            elif key in ("backoff_for", "suspend_for"):
                seconds = parse_duration(raw.text)
                if seconds <= 0:
                    raise ValueError("must be longer than 0")
                values["period" if key == "backoff_for" else key] = seconds
            elif key == "backoff_floor":
                values["floor"] = positive_int(raw.text)
            elif key == "suspend_after":
                m = _AFTER.match(raw.text)
                if not m or int(m.group(1)) < 1:
                    raise ValueError(f"cannot read {raw.text!r} (expected a count, or e.g. 3 in 10m)")
                values["suspend_after"] = int(m.group(1))
                if m.group(2):
                    values["suspend_window"] = parse_duration(m.group(2))
        except ValueError as exc:
            raise ConfigError(path, raw.line, f"{key} {exc}") from None
    return Policy(**values)  # type: ignore[arg-type]


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
            values[key] = _classes(path, key, raw)
        elif key not in KEYS:
            raise ConfigError(path, raw.line, unknown("key", key, KEYS))
    policy = _policy(path, {k: v for k, v in keys.items() if k in KEYS[3:]})
    return Actions(retry=retry, backoff=policy, **values)  # type: ignore[arg-type]
