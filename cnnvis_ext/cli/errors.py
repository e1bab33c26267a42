"""The errors a user can cause, and how they are printed: one line,
``cnnvis <command>: error: ...``."""
from __future__ import annotations

__all__ = ["PROG", "CLIError", "one_line"]

PROG = "cnnvis"


class CLIError(Exception):
    """An error caused by the user's input: printed as one line, exit status 1."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without its quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = str(msg).strip()
    return msg.splitlines()[0] if msg else type(e).__name__
