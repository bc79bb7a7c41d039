"""``python -m interleave_thinker``: the command line."""

from .core.cli import main

raise SystemExit(main())
