"""Exit codes (sysexits) shared by every ``chatsdk`` command, and the one error-to-code map.

A script branches on these; they mean the same thing in every command::

    0   done
    2   usage: bad arguments (argparse)
    65  invalid input: the message, a file or an argument was refused; nothing was sent
    69  the service is unavailable after retries, or its circuit is open; or the
      outbox's database cannot be reached
    75  queued but not yet delivered (``--queue --wait`` or ``outbox drain`` ran out of time)
    77  the API key was refused (401/403)
    78  configuration missing or unusable (URL, key, key file, outbox)
    70  a bug in chatsdk (please report it; ``-v`` shows the traceback)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from chatsdk._errors import (
    APIError,
    ChatSDKError,
    CircuitBreakerOpenError,
    ConfigurationError,
    ForbiddenError,
    InvalidResponseError,
    OutboxEntryExpiredError,
    OutboxError,
    OutboxUnavailableError,
    RealtimeError,
    TransportError,
    UnauthorizedError,
    ValidationError,
    WaitTimeoutError,
)
from chatsdk.cli._output import echo

__all__ = [
    "CONFIG",
    "DATAERR",
    "EPILOG",
    "NOPERM",
    "OK",
    "SOFTWARE",
    "TEMPFAIL",
    "UNAVAILABLE",
    "USAGE",
    "CommandError",
    "exit_code_for",
    "run_reporting",
]

log = logging.getLogger(__name__)

OK = 0
USAGE = 2
DATAERR = 65
SOFTWARE = 70
UNAVAILABLE = 69
TEMPFAIL = 75
NOPERM = 77
CONFIG = 78

#: The table every client command shows at the end of ``--help``.
EPILOG = """\
exit status (the same in every chatsdk command):
  0   done
  2   usage: bad arguments
  65  invalid input (message, file, argument refused); nothing was sent
  69  the service is unavailable after retries, or its circuit is open
  75  queued but not yet delivered (--queue --wait, outbox drain ran out of time)
  77  the API key was refused (401/403)
  78  configuration missing or unusable (CHATSDK_URL, key, key file, outbox)
  70  a bug in chatsdk (please report it; -v shows the traceback)
"""

#: Statuses that are the caller's input at fault, not the service (no retry can help).
_INPUT_STATUSES = frozenset({400, 404, 413, 422})


class CommandError(Exception):
    """A failure a command reports as one line on stderr with its exit code.

    Attributes:
        code: the exit status.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an error raised by a command (the one mapping of the CLI)."""
    if isinstance(exc, CommandError):
        return exc.code
    if isinstance(exc, (UnauthorizedError, ForbiddenError)):
        return NOPERM
    if isinstance(exc, ConfigurationError):
        return CONFIG
    if isinstance(exc, ValidationError):
        return DATAERR
    if isinstance(exc, InvalidResponseError):
        return UNAVAILABLE
    if isinstance(exc, APIError):
        return DATAERR if exc.status in _INPUT_STATUSES else UNAVAILABLE
    if isinstance(exc, WaitTimeoutError):
        return TEMPFAIL
    if isinstance(exc, (OutboxEntryExpiredError, OutboxUnavailableError)):
        return UNAVAILABLE  # a database restarting or failing over: worth another try
    if isinstance(exc, OutboxError):
        return CONFIG
    if isinstance(exc, (TransportError, CircuitBreakerOpenError, RealtimeError)):
        return UNAVAILABLE
    if isinstance(exc, ChatSDKError):
        return UNAVAILABLE
    return SOFTWARE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (UnauthorizedError, ForbiddenError)):
        return f"the API key was refused ({exc})"
    if isinstance(exc, CircuitBreakerOpenError):
        return f"the service is unavailable: {exc}"
    if isinstance(exc, TransportError):
        attempts = f" after {exc.attempts} attempts" if exc.attempts else ""
        return f"the service is unavailable{attempts}: {exc}"
    if isinstance(exc, APIError) and exit_code_for(exc) == UNAVAILABLE:
        attempts = f" after {exc.attempts} attempts" if exc.attempts else ""
        return f"the service is unavailable{attempts}: {exc}"
    if isinstance(exc, ValidationError):
        return f"invalid {exc}; nothing was sent"
    if isinstance(exc, APIError) and exit_code_for(exc) == DATAERR:
        return f"the server refused the request ({exc}); nothing was created"
    if exit_code_for(exc) == SOFTWARE:
        return f"internal error {type(exc).__name__}: {exc} (please report it; -v shows more)"
    return str(exc)


def run_reporting(
    name: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """Run ``command(args)``; an error becomes one line on stderr and its exit status."""
    try:
        return command(args)
    except KeyboardInterrupt:
        echo(f"chatsdk {name}: interrupted", err=True)
        return 130
    except Exception as exc:  # every error is reported as one line with its code
        code = exit_code_for(exc)
        if code == SOFTWARE:
            log.debug("chatsdk %s failed", name, exc_info=True)
        echo(f"chatsdk {name}: {_describe(exc)}", err=True)
        return code
