"""Output for the user: the one place the command line writes to stdout and stderr."""

from __future__ import annotations

import sys

__all__ = ["echo"]


def echo(text: str, *, err: bool = False) -> None:
    """Write a line for the user on stdout (or stderr) and flush it at once."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()
