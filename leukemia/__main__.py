"""``python -m leukemia``: the same as the ``leukemia`` command."""

from .cli import main

raise SystemExit(main())
