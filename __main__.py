"""``python -m interleave_thinker``: the command line."""

from .cli import main

raise SystemExit(main())
