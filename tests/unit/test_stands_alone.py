"""The repository stands alone (issue 24 item 7): nothing the product ships -- code, --help,
config comments, units, README, docs -- points at a document it does not contain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the name of the contract kept outside the repository, spelt so this file does not cite it
CITED = "PROD" + "UCT"
SHIPPED = ["mailflow", "tasks", "config", "deploy", "docs", "tests", "harness", "bench", "README.md",
           "celeryconfig.py", "Makefile", "pyproject.toml"]


def test_no_shipped_file_cites_the_product_contract():
    cited = []
    for top in SHIPPED:
        root = REPO / top
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if path.suffix in (".png", ".pyc") or "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            cited += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if CITED in line]
    assert cited == []


def test_no_help_text_cites_it_either():
    for argv in (["--help"], ["sendmail", "--help"], ["sink", "--help"], ["flower", "--help"]):
        done = subprocess.run([sys.executable, "-m", "mailflow", *argv], capture_output=True, timeout=60,
                              cwd=REPO)
        assert CITED.encode() not in done.stdout + done.stderr, argv
