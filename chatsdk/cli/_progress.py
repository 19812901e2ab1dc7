"""Progress bars on stderr for the command line, drawn by tqdm (the ``cli`` extra).

Without tqdm installed, or when stderr is not a terminal (unless ``force``), the bar is a
no-op: a cron job's log gets no carriage-return noise.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

__all__ = ["Bar", "available", "progress_bar"]


class Bar(Protocol):
    """What the commands use of a tqdm bar."""

    n: float
    total: float | None

    def refresh(self) -> None: ...  # pragma: no cover - protocol

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover - protocol


class _NoBar:
    """Stands in for a bar that is not drawn."""

    def __init__(self, total: float | None) -> None:
        self.n: float = 0
        self.total = total

    def refresh(self) -> None:
        """Nothing to draw."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Nothing to draw."""

    def close(self) -> None:
        """Nothing to close."""


def available() -> bool:
    """True when tqdm is installed (the ``cli`` extra), so bars can be drawn."""
    try:
        import tqdm  # noqa: F401, PLC0415 - optional: the cli extra
    except ImportError:
        return False
    return True


def progress_bar(
    total: float | None,
    desc: str,
    *,
    stream: TextIO | None = None,
    force: bool = False,
    **options: Any,
) -> Bar:
    """A tqdm bar on ``stream`` (stderr), or a no-op one (no tqdm, or not a terminal).

    Args:
        total: the count that means done.
        desc: the label before the bar.
        stream: where to draw (default ``sys.stderr``).
        force: draw even when ``stream`` is not a terminal (tests, ``--progress``).
        **options: more tqdm arguments (``unit``, ``bar_format``...).
    """
    out = sys.stderr if stream is None else stream
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional: the cli extra
    except ImportError:
        return _NoBar(total)
    if not force and not out.isatty():
        return _NoBar(total)
    bar: Bar = tqdm(total=total, desc=desc, file=out, leave=True, dynamic_ncols=True, **options)
    return bar
