"""Configuration shared by the client commands: server URL, API key, outbox file.

Sources, first found wins:

- URL: ``--url``, then ``$CHATSDK_URL``;
- API key: ``--api-key-file FILE``, then ``$CHATSDK_API_KEY`` or ``$CHATSDK_API_KEY_FILE``
  (setting both is an error: which one was meant?). The key itself is never an argument:
  arguments are visible to every user of the machine in ``ps``;
- outbox: ``--outbox FILE``, then ``$CHATSDK_OUTBOX``.

Anything missing or unusable is a :class:`~chatsdk.cli._exits.CommandError` with exit 78
that names the setting, never the key.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import attrs

from chatsdk._client import ChatClient
from chatsdk._outbox.outbox import Outbox
from chatsdk.cli._exits import CONFIG, EPILOG, CommandError
from chatsdk.cli._output import add_secret

__all__ = [
    "API_KEY_ENV",
    "API_KEY_FILE_ENV",
    "KEY_ARGUMENT_ERROR",
    "OUTBOX_ENV",
    "URL_ENV",
    "Config",
    "add_client_options",
    "add_command",
    "key_on_command_line",
    "load",
    "make_client",
]

URL_ENV = "CHATSDK_URL"
API_KEY_ENV = "CHATSDK_API_KEY"
API_KEY_FILE_ENV = "CHATSDK_API_KEY_FILE"
OUTBOX_ENV = "CHATSDK_OUTBOX"
_MAX_KEY_FILE = 64 * 1024


@attrs.frozen(kw_only=True)
class Config:
    """What a client command needs: where the server is, the key, the outbox file."""

    url: str
    api_key: str = attrs.field(repr=False)
    outbox: str | None = None


def seconds(text: str) -> float:
    """An argparse type: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number > 0 (seconds, a rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def key_on_command_line(argv: Sequence[str]) -> bool:
    """True when ``argv`` tries to pass the key itself (``--api-key VALUE``) before any ``--``.

    Refused before argparse sees it: argparse would echo the value in its error message.
    """
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--api-key" or arg.startswith("--api-key="):
            return True
    return False


KEY_ARGUMENT_ERROR = (
    "the API key is not taken on the command line (every user of the machine sees it in "
    f"ps): set ${API_KEY_ENV}, or pass --api-key-file FILE"
)


def add_client_options(parser: argparse.ArgumentParser, *, outbox: bool = False) -> None:
    """Add ``--url``, ``--api-key-file`` (and ``--outbox``) to a client command."""
    group = parser.add_argument_group("configuration")
    group.add_argument("--url", default=None, help=f"the server (default: ${URL_ENV})")
    group.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help=f"read the API key from FILE (default: ${API_KEY_ENV} or ${API_KEY_FILE_ENV})",
    )
    if outbox:
        group.add_argument(
            "--outbox",
            default=None,
            metavar="FILE",
            help=f"the outbox file (default: ${OUTBOX_ENV})",
        )


def add_command(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a client subcommand whose ``--help`` ends with the exit-status table."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # No abbreviations: "--api-key VALUE" must never be taken for "--api-key-file VALUE".
        allow_abbrev=False,
        **kwargs,
    )
    return parser


def _read_key_file(path: str, source: str) -> str:
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise CommandError(
            CONFIG, f"cannot read the API key file ({source}) {path}: {exc.strerror or exc}"
        ) from None
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError(CONFIG, f"the API key file {path} is not UTF-8 text") from None
    if len(raw) > _MAX_KEY_FILE or not key or any(c.isspace() for c in key):
        raise CommandError(CONFIG, f"the API key file {path} does not hold one key on one line")
    return key


def _api_key(args: argparse.Namespace) -> str:
    path = getattr(args, "api_key_file", None)
    if path:
        return _read_key_file(path, "--api-key-file")
    key = os.environ.get(API_KEY_ENV)
    key_file = os.environ.get(API_KEY_FILE_ENV)
    if key and key_file:
        raise CommandError(
            CONFIG, f"both ${API_KEY_ENV} and ${API_KEY_FILE_ENV} are set: unset one"
        )
    if key_file:
        return _read_key_file(key_file, f"${API_KEY_FILE_ENV}")
    if key:
        return key
    raise CommandError(
        CONFIG,
        f"no API key: set ${API_KEY_ENV}, or ${API_KEY_FILE_ENV} or --api-key-file to a file "
        "holding it",
    )


def load(args: argparse.Namespace, *, need_outbox: bool = False) -> Config:
    """The configuration for ``args`` and the environment; no I/O beyond the key file.

    Raises:
        CommandError: (exit 78) the URL, the key or a needed outbox is missing.
    """
    url = getattr(args, "url", None) or os.environ.get(URL_ENV)
    if not url:
        raise CommandError(CONFIG, f"no server URL: set ${URL_ENV} or pass --url")
    key = _api_key(args)
    add_secret(key)
    outbox = getattr(args, "outbox", None) or os.environ.get(OUTBOX_ENV) or None
    if need_outbox and not outbox:
        raise CommandError(CONFIG, f"no outbox file: set ${OUTBOX_ENV} or pass --outbox")
    return Config(url=url, api_key=key, outbox=outbox)


def make_client(
    config: Config,
    *,
    outbox: bool = False,
    close_timeout: float = 0.0,
    lease_seconds: float | None = None,
) -> ChatClient:
    """A :class:`ChatClient` for ``config`` (with its outbox when ``outbox``).

    ``lease_seconds`` sets the outbox's lease (how soon another drainer takes over the
    entries of one that died); None keeps the default. The caller closes ``client.outbox``
    after the client (an Outbox handed to a client stays the caller's).
    """
    target: Any = config.outbox if outbox else None
    if target is not None and lease_seconds is not None:
        target = Outbox(target, lease_seconds=lease_seconds)
    return ChatClient(config.url, config.api_key, outbox=target, close_timeout=close_timeout)
