"""``python -m mailflow``: the ``mailflow`` command."""

from mailflow.cli import main

raise SystemExit(main())
