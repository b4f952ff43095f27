"""``classes.md``: the reply classes, the shipped rules with their sources, and the actions."""

from __future__ import annotations

from mailflow.classify.actions import DEFAULT_SUPPRESS, Policy
from mailflow.classify.classes import CLASSES
from mailflow.classify.rules import DEFAULT_RULES, SOURCES, Rule, source_of
from mailflow.reference.markdown import GENERATED, code, table

INTRO = """\
# Reply classes

Every reply a receiver sends -- and mailflow's own, for DNS, connection and TLS failures --
gets one class. `config/classify.ini`'s `[rule:NAME]` sections are tried first, then the
shipped rules below, in order; the first that matches wins. A reply no rule speaks of is
`TransientFailure` when temporary, else `Uncategorized`. `mailflow classify 'REPLY'
[--mx HOST]` prints `CLASS rule=NAME`.

"""

def _actions() -> str:
    return "## Actions (`classify.ini [actions]`)\n\n" + table(("Key", "Default", "What it does"), [
        (code("suppress"), ", ".join(sorted(DEFAULT_SUPPRESS)),
         "a receiver's own permanent refusal of a recipient of these classes puts the address on "
         "the suppression list (mailflow's own conclusions never do)"),
        (code("bounce_now"), "(none)", "a temporary failure of these classes bounces at once, "
         "without the retry schedule"),
        (code("retry.<Class>"), "(outbound.ini `temp_fail_intervals`)",
         "the class's own retry schedule, in that syntax; a permanent refusal of such a class "
         "is retried on it too (a full mailbox answered 552, which RFC 5321 says to take as "
         "temporary)"),
        (code("backoff"), ", ".join(sorted(DEFAULT.classes)),
         "a reply of these classes halves the connections and the rate its source may use "
         "towards the destination *site* (the MX host's registrable domain by the Public Suffix "
         "List: `google.com` for `gmail-smtp-in.l.google.com`), on every host; a repeat more "
         "than a minute later halves again, down to one connection and `backoff_floor`; "
         "empty: off"),
        (code("backoff_for"), f"{DEFAULT.period // 60}m",
         "how long a backoff holds after the last such reply; then each further period without "
         "one gives a halving back"),
        (code("backoff_floor"), str(DEFAULT.floor), "messages a minute a backoff never goes below"),
        (code("suspend"), ", ".join(sorted(DEFAULT.suspend)),
         "replies of these classes are counted per site and source ..."),
        (code("suspend_after"), f"{DEFAULT.suspend_after} in {DEFAULT.suspend_window // 60}m",
         "... and this many within the window stop the source sending to the site ..."),
        (code("suspend_for"), f"{DEFAULT.suspend_for // 60}m", "... for this long")]) + BACKOFF

DEFAULT = Policy()

BACKOFF = """
What is halved is what a `shaping.ini` rule over the destination allows (its
`max_connections`, its `messages_per_minute` or `messages_per_hour`); where none does,
outbound.ini's `pool_concurrency_max` connections and the rate the worker process that got
the reply was sending at over the last minute. A backoff is enforced as one more shaping
rule, `backoff:<site>/<source>` (the source: its egress.ini name, its address, or
`default`), through the same shared store as shaping.ini's rules: held mail waits in
`pending/` and is not counted as a failure; `queue list` names the rule that holds it.
`mailflow queue stats` shows `backoff:<site>/<source>=<seconds until the normal limits
hold again>`, and the metrics `mailflow_backoff{site,source}` (the share of the normal rate
now allowed, 0 while suspended).
"""


def _match(rule: Rule) -> str:
    parts = []
    for key in ("code", "enhanced", "mx"):
        value = getattr(rule, key)
        if value:
            parts.append(f"{key} {code(value)}")
    text = rule.text
    if text is not None:
        parts.append(f"text {code(text.pattern)}")
    return ", ".join(parts)


def page() -> str:
    out = [GENERATED, INTRO, "## Classes\n\n",
           table(("Class", "Meaning"), [(code(c), doc) for c, doc in CLASSES.items()]), "\n",
           "## Shipped rules, in order\n\n",
           table(("Rule", "Class", "Matches"),
                 [(code(r.name), code(r.cls), _match(r)) for r in DEFAULT_RULES]),
           "\n## Their sources\n\n",
           table(("Rules named", "Source"), [(code(f"{prefix}-…"), text) for prefix, text in SOURCES.items()
                                            if any(source_of(r) == text for r in DEFAULT_RULES)]),
           "\n", _actions()]
    return "".join(out).rstrip("\n") + "\n"
