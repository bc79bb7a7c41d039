"""The project's one error tree. Every error the package raises on purpose derives from
:class:`InterleaveThinkerError`, so callers (the CLI's exit codes, the nodes' messages) map one tree in one
place.

- :class:`BadInput`: the user's input is wrong; the message says what to fix (CLI exit 2).
- :class:`BackendError`: a model, endpoint or generator could not be used (CLI exit 3).
- :class:`ProtocolError` (in ``protocol``): agent output that is not a valid plan or verdict (CLI exit 4).
- :class:`Cancelled`: the user asked to stop (CLI exit 130).

Each class keeps the builtin base it had before the tree existed (ValueError, RuntimeError), so ``except
ValueError`` in older callers still catches what it caught.
"""

from __future__ import annotations


class InterleaveThinkerError(Exception):
    """Root of every error this package raises on purpose."""


class BadInput(InterleaveThinkerError, ValueError):
    """Input the user can fix: a missing file, a value out of range, a malformed row."""


class BackendError(InterleaveThinkerError, RuntimeError):
    """A model, endpoint or generator could not be used."""


class Cancelled(InterleaveThinkerError, RuntimeError):
    """The cancel hook asked to stop; nothing after the last finished model call was done."""


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` once the cancel hook (a callable returning True to stop) says so."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


__all__ = ["BackendError", "BadInput", "Cancelled", "InterleaveThinkerError", "check_cancel"]
