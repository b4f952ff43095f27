"""``logs.md``: every operator-facing log line, its keyword and its fields."""

from __future__ import annotations

from mailflow.logs import EVENTS
from mailflow.reference.markdown import GENERATED, code, table

INTRO = """\
# Log lines

Every message's life is told in lines that start with a keyword and go on with
`key=value` fields, in the order below (free text quoted; `-` for none); with
`--log-format json` (or `MAILFLOW_LOG_FORMAT=json`) each line is one JSON object with the
keyword as `event` and the same fields as keys. Times are UTC.

```
queued id=1b2c… from=app@example.com rcpts=user@example.net size=1234 client=127.0.0.1 auth=demo
delivered id=1b2c….1 domain=example.net host=mx.example.net ip=192.0.2.25 port=25 mode=SMTP …
```

"""


def page() -> str:
    out = [GENERATED, INTRO, table(("Keyword", "Written when"),
                                   [(code(e.kind), e.doc) for e in EVENTS.values()]), "\n"]
    shown: set[tuple[tuple[str, str], ...]] = set()
    for e in EVENTS.values():
        if e.fields in shown:
            continue
        same = [x.kind for x in EVENTS.values() if x.fields == e.fields]
        shown.add(e.fields)
        out.append("## " + ", ".join(f"`{k}`" for k in same) + "\n\n")
        out.append(table(("Field", "Meaning"), [(code(name), doc) for name, doc in e.fields]) + "\n")
    return "".join(out).rstrip("\n") + "\n"
