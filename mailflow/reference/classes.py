"""``classes.md``: the reply classes, the shipped rules with their sources, and the actions."""

from __future__ import annotations

from mailflow.classify.actions import DEFAULT_SUPPRESS
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
         "the class's own retry schedule, in that syntax")])


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
