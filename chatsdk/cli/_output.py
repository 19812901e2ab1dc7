"""Output for the user: the one place the command line writes to stdout and stderr.

Every line goes through :func:`echo`, which masks the secrets registered with
:func:`add_secret` (the API key), so no message, error or log line of the command line can
show the key even if some error text carried it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from chatsdk._models import Message, Reaction

__all__ = [
    "RedactingFormatter",
    "add_secret",
    "echo",
    "echo_json",
    "message_line",
    "reaction_line",
    "redact",
    "silence_stdout",
]

_MASK = "***"
_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """Mask ``secret`` in everything the command line prints from now on."""
    if secret:
        _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def echo(text: str, *, err: bool = False) -> None:
    """Write a line for the user on stdout (or stderr) and flush it at once."""
    stream = sys.stderr if err else sys.stdout
    stream.write(redact(text) + "\n")
    stream.flush()


def echo_json(data: Any) -> None:
    """Write one JSON object on one line of stdout (``--json`` output)."""
    echo(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class RedactingFormatter(logging.Formatter):
    """A log formatter that masks the registered secrets (for ``-v`` on stderr)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _when(message: Message) -> str:
    return message.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _indent(text: str) -> str:
    # Continuation lines line up under the text, so a multi-line message stays readable.
    return text.replace("\n", "\n" + " " * 4)


def message_line(message: Message, *, note: str = "") -> str:
    """One message for people: ``DATE TIME  CHANNEL  ID  USER: TEXT``."""
    reply = f" (reply to {message.parent_id})" if message.parent_id else ""
    files = "".join(f"\n    [{a.type}] {a.url}" for a in message.attachments)
    suffix = f" [{note}]" if note else ""
    return (
        f"{_when(message)}  {message.channel_id}  {message.id}  "
        f"{message.user_id}{reply}: {_indent(message.text)}{suffix}{files}"
    )


def reaction_line(reaction: Reaction, channel: str, *, removed: bool = False) -> str:
    """One reaction for people, in the same columns as :func:`message_line`."""
    when = reaction.created_at.strftime("%Y-%m-%d %H:%M:%S")
    verb = "removed" if removed else "reacted"
    return (
        f"{when}  {channel}  {reaction.message_id}  {reaction.user_id} {verb} {reaction.reaction}"
    )
