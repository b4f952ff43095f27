"""``python -m mailflow.reference [DIR]``: write the reference pages (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

from mailflow.reference import write


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("docs/reference")
    for path in write(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
