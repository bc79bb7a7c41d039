"""The ``interleave-thinker`` program: the engine's commands and the sandbox's, listed explicitly."""

from __future__ import annotations

from collections.abc import Sequence

from .core import cli as engine
from .sandbox import cli as sandbox


def commands() -> list[engine.Command]:
    return [*engine.engine_commands(sandbox.GENERATORS), *sandbox.COMMANDS]


def main(argv: Sequence[str] | None = None) -> int:
    return engine.main(argv, commands())


if __name__ == "__main__":
    raise SystemExit(main())
