"""``chatsdk send``: post one message, now or through the outbox.

::

    chatsdk send CHANNEL TEXT|- [--reply-to ID] [--attachment TYPE URL [NAME]]...
                 [--key KEY | --key-from PART...] [--queue [--wait S]] [--json]

``-`` reads the text from stdin (UTF-8; trailing newlines dropped). ``--key-from`` derives the
idempotency key from the parts (:func:`chatsdk.idempotency_key_for`), so a rerun of the same
job posts nothing twice. ``--queue`` returns once the message is committed to the outbox file;
``--wait S`` then waits up to S seconds for its delivery (exit 75 if it is still queued).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from chatsdk._errors import WaitTimeoutError
from chatsdk._http.idempotency import idempotency_key_for
from chatsdk._models import Attachment, Message
from chatsdk._outbox.models import OutboxEntry
from chatsdk._validation import MAX_TEXT, message_body
from chatsdk.cli._config import Config, add_client_options, add_command, load, make_client, seconds
from chatsdk.cli._exits import DATAERR, TEMPFAIL, USAGE, CommandError, run_reporting
from chatsdk.cli._output import echo, echo_json, message_line

__all__ = ["add_parser", "read_text", "run"]

#: Bytes read from stdin at most: far above 4000 characters of UTF-8, far below a runaway pipe.
MAX_STDIN_BYTES = 64 * 1024
_WAIT_SLICE = 0.1  # seconds between looks at the drainer while waiting for a delivery


def add_parser(subparsers: Any) -> None:
    """Add the ``send`` subcommand."""
    parser = add_command(
        subparsers,
        "send",
        help="post a message (now, or queued in the outbox with --queue)",
        description=(
            "Post one message. It is sent under one idempotency key across every retry, "
            "so it arrives once; with --key or --key-from, a rerun of the same job posts "
            "nothing twice. TEXT '-' reads the text from stdin."
        ),
    )
    parser.add_argument("channel", metavar="CHANNEL", help="the channel id")
    parser.add_argument("text", metavar="TEXT", help="the message text, or - for stdin")
    parser.add_argument("--reply-to", metavar="ID", default=None, help="the message to reply to")
    parser.add_argument(
        "--attachment",
        nargs="+",
        action="append",
        default=[],
        metavar="TYPE URL [NAME]",
        help="attach a file by URL (repeatable, at most 10)",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key", default=None, help="the idempotency key for this message")
    keys.add_argument(
        "--key-from",
        nargs="+",
        metavar="PART",
        default=None,
        help="derive the idempotency key from these parts (e.g. a job name and a date)",
    )
    parser.add_argument(
        "--queue",
        action="store_true",
        help="hand the message to the outbox and exit 0 once it is on disk",
    )
    parser.add_argument(
        "--wait",
        type=seconds,
        default=None,
        metavar="S",
        help="with --queue: wait up to S seconds for the delivery (exit 75 if still queued)",
    )
    parser.add_argument("--json", action="store_true", help="print the created Message as JSON")
    add_client_options(parser, outbox=True)
    parser.set_defaults(func=run, client_command=True)


def run(args: argparse.Namespace) -> int:
    """Run ``send``; returns the exit status."""
    return run_reporting("send", _send, args)


def read_text(stream: Any) -> str:
    """The message text from a binary stream: UTF-8, trailing newlines dropped.

    Raises:
        CommandError: (65) not UTF-8, empty, or longer than the API takes.
    """
    raw = stream.read(MAX_STDIN_BYTES + 1)
    if len(raw) > MAX_STDIN_BYTES:
        raise CommandError(
            DATAERR,
            f"stdin holds more than {MAX_STDIN_BYTES} bytes; a message is at most "
            f"{MAX_TEXT} characters (nothing was sent)",
        )
    try:
        text: str = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            DATAERR, f"stdin is not UTF-8 text (byte {exc.start}); nothing was sent"
        ) from None
    text = text.rstrip("\r\n")
    length = len(text.strip())
    if length == 0:
        raise CommandError(DATAERR, "stdin held no text; nothing was sent")
    if length > MAX_TEXT:
        raise CommandError(
            DATAERR,
            f"the text on stdin is {length} characters; a message is at most {MAX_TEXT} "
            "(nothing was sent)",
        )
    return text


def _attachments(items: list[list[str]]) -> list[Attachment]:
    result = []
    for item in items:
        if len(item) not in (2, 3):
            raise CommandError(USAGE, "--attachment takes TYPE URL [NAME]")
        result.append(
            Attachment(type=item[0], url=item[1], name=item[2] if len(item) > 2 else None)
        )
    return result


def _send(args: argparse.Namespace) -> int:
    if args.wait is not None and not args.queue:
        raise CommandError(USAGE, "--wait needs --queue")
    attachments = _attachments(args.attachment)
    text = read_text(sys.stdin.buffer) if args.text == "-" else args.text
    key = args.key
    if args.key_from is not None:
        key = idempotency_key_for(*args.key_from)
    # Every argument is checked before the configuration is read and before any I/O.
    message_body(args.channel, text, attachments, args.reply_to)
    config = load(args, need_outbox=args.queue)
    if args.queue:
        return _queue(args, config, text, attachments, key)
    with make_client(config) as client:
        message = client.send_message(
            args.channel,
            text,
            attachments=attachments,
            parent_id=args.reply_to,
            idempotency_key=key,
        )
    _print_message(message, args.json)
    return 0


def _print_message(message: Message, as_json: bool) -> None:
    if as_json:
        echo_json({**message.to_json(), "replayed": message.replayed})
    else:
        echo(message_line(message, note="already sent: replayed" if message.replayed else ""))


def _queued(entry: OutboxEntry[Message], path: str) -> dict[str, Any]:
    return {
        "outboxEntry": entry.id,
        "idempotencyKey": entry.idempotency_key,
        "status": "queued",
        "outbox": path,
    }


def _queue(
    args: argparse.Namespace,
    config: Config,
    text: str,
    attachments: list[Attachment],
    key: str | None,
) -> int:
    client = make_client(config, outbox=True)
    try:
        entry = client.queue_message(
            args.channel,
            text,
            attachments=attachments,
            parent_id=args.reply_to,
            idempotency_key=key,
        )
        assert client.outbox is not None
        path = client.outbox.path
        if args.wait is None:
            if args.json:
                echo_json(_queued(entry, path))
            else:
                echo(f"queued as outbox entry {entry.id} in {path}")
            return 0
        deadline = time.monotonic() + args.wait
        while True:
            left = deadline - time.monotonic()
            try:
                message = entry.wait(max(0.0, min(_WAIT_SLICE, left)))
                break
            except WaitTimeoutError:
                refused = client.outbox_auth_error
                if refused is not None:
                    raise refused from None
                if left <= 0:
                    if args.json:
                        echo_json(_queued(entry, path))
                    raise CommandError(
                        TEMPFAIL,
                        f"queued as outbox entry {entry.id} but not delivered within "
                        f"{args.wait:g}s; it stays in {path} for the next 'chatsdk outbox drain'",
                    ) from None
    finally:
        client.close()
    _print_message(message, args.json)
    return 0
