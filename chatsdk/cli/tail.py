"""``chatsdk tail CHANNEL... [--json] [--since-file F] [--count N]``: follow channels live.

Every publication is printed once, in order per channel, across reconnects and server
restarts (the realtime client recovers what was missed). With ``--since-file``, the position
of each channel (epoch and offset of the last publication printed) is written to F after
every line, atomically, and read back at start: a later run goes on exactly where this one
stopped. SIGINT and SIGTERM save the position and exit 0. A ``kill -9`` in the instant
between printing a line and saving it repeats that one line at the next start (never
loses one).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from contextlib import suppress
from typing import Any

from chatsdk._client import ChatClient
from chatsdk._errors import ChatSDKError, ForbiddenError, RealtimeError, UnauthorizedError
from chatsdk._models import Message, Reaction
from chatsdk._realtime.client import RealtimeClient, RealtimeState
from chatsdk._realtime.subscription import Publication, StreamPosition, Subscription
from chatsdk._validation import check_channel
from chatsdk.cli._config import add_client_options, add_command, load, make_client, positive_int
from chatsdk.cli._exits import DATAERR, NOPERM, UNAVAILABLE, CommandError, run_reporting
from chatsdk.cli._output import echo, message_line, reaction_line, silence_stdout
from chatsdk.cli._signals import stop_on_signals

__all__ = ["add_parser", "format_publication", "read_positions", "run", "write_positions"]

_PREFIX = "chat:"
_TICK = 0.2  # seconds between the main thread's looks at the connection and positions
_NOTES = {"message.updated": "edited", "message.deleted": "deleted"}


def add_parser(subparsers: Any) -> None:
    """Add the ``tail`` subcommand."""
    parser = add_command(
        subparsers,
        "tail",
        help="print channels' new messages and reactions live",
        description=(
            "Follow channels over realtime and print every publication once, in order, "
            "across reconnects. With --since-file, a later run resumes exactly where this "
            "one stopped. SIGINT/SIGTERM save the position and exit 0."
        ),
    )
    parser.add_argument("channels", nargs="+", metavar="CHANNEL", help="the channel ids")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per publication (the event)"
    )
    parser.add_argument(
        "--since-file",
        metavar="FILE",
        default=None,
        help="resume from the positions in FILE and keep them there",
    )
    parser.add_argument(
        "--count", type=positive_int, default=None, metavar="N", help="exit 0 after N"
    )
    add_client_options(parser)
    parser.set_defaults(func=run, client_command=True)


def run(args: argparse.Namespace) -> int:
    """Run ``tail``; returns the exit status."""
    return run_reporting("tail", _tail, args)


# -- positions --------------------------------------------------------------------------


def read_positions(path: str) -> dict[str, StreamPosition]:
    """The positions saved in ``path`` (none when it does not exist yet).

    Raises:
        CommandError: (65) the file exists but is not a position file.
    """
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CommandError(DATAERR, f"--since-file {path} is unreadable: {exc}") from None
    try:
        return {
            str(channel): StreamPosition(int(pos["offset"]), str(pos["epoch"]))
            for channel, pos in data["channels"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CommandError(DATAERR, f"--since-file {path} is not a chatsdk position file") from None


def write_positions(path: str, positions: dict[str, StreamPosition]) -> None:
    """Replace ``path`` atomically (write a temporary file, fsync, rename)."""
    data = {"channels": {ch: {"epoch": p.epoch, "offset": p.offset} for ch, p in positions.items()}}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".chatsdk-tail-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


# -- output -----------------------------------------------------------------------------


def format_publication(channel: str, pub: Publication, *, as_json: bool) -> str:
    """The line printed for one publication of chat channel ``channel``."""
    data = pub.data
    if as_json:
        body = data if isinstance(data, dict) else {"data": data}
        event = {"channel": channel, "offset": pub.offset, "epoch": pub.epoch, **body}
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind in ("message.new", "message.updated", "message.deleted"):
            return message_line(Message.from_json(data["message"]), note=_NOTES.get(kind, ""))
        if kind in ("reaction.added", "reaction.removed"):
            reaction = Reaction.from_json(data["reaction"])
            return reaction_line(reaction, channel, removed=kind == "reaction.removed")
    except (ValueError, KeyError, TypeError):
        pass
    return f"{channel}  {json.dumps(data, ensure_ascii=False)}"


class _Tail:
    """The state shared by the dispatch thread (printing) and the main thread (stopping)."""

    def __init__(self, args: argparse.Namespace, positions: dict[str, StreamPosition]) -> None:
        self.args = args
        self.positions = positions
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.printed = 0
        self.saved: dict[str, StreamPosition] = dict(positions)
        self.subs: dict[str, Subscription] = {}
        self.connected_once = False

    def on_publication(self, channel: str, pub: Publication) -> None:
        with self.lock:
            if self.stop.is_set():
                return  # past --count or a signal: not printed, so not saved either
            try:
                echo(format_publication(channel, pub, as_json=self.args.json))
            except BrokenPipeError:
                silence_stdout()
                self.stop.set()
                return
            self.printed += 1
            if pub.offset:
                self.positions[channel] = StreamPosition(pub.offset, pub.epoch)
                self._save()
            if self.args.count is not None and self.printed >= self.args.count:
                self.stop.set()

    def on_recovery_failed(self, channel: str) -> None:
        echo(
            f"chatsdk tail: publications on {channel} were missed and cannot be recovered "
            f"(history expired or the stream restarted); run 'chatsdk history {channel}'",
            err=True,
        )
        with self.lock:
            sub = self.subs.get(channel)
            if sub is not None and sub.position is not None:
                self.positions[channel] = sub.position
                self._save()

    def on_state_change(self, _old: RealtimeState, new: RealtimeState) -> None:
        if new is RealtimeState.CONNECTED:
            if self.connected_once:
                echo("chatsdk tail: connected again", err=True)
            self.connected_once = True
        elif self.connected_once and new is RealtimeState.CONNECTING:
            echo("chatsdk tail: connection lost; reconnecting", err=True)

    def adopt_start_positions(self) -> None:
        """Save where a fresh subscription starts, before it printed anything."""
        with self.lock:
            for channel, sub in self.subs.items():
                if channel not in self.positions and sub.position is not None:
                    self.positions[channel] = sub.position
                    self._save()

    def _save(self) -> None:
        path = self.args.since_file
        if path is None or self.positions == self.saved:
            return
        write_positions(path, self.positions)
        self.saved = dict(self.positions)

    def save(self) -> None:
        with self.lock:
            self._save()


def _tail(args: argparse.Namespace) -> int:
    for channel in args.channels:
        check_channel(channel)  # checked before configuration and I/O
    positions = read_positions(args.since_file) if args.since_file else {}
    state = _Tail(args, positions)
    client = make_client(load(args))
    with client, stop_on_signals(state.stop):
        realtime = client.realtime(on_state_change=state.on_state_change)
        try:
            for channel in dict.fromkeys(args.channels):
                state.subs[channel] = _subscribe(realtime, state, channel)
            realtime.connect()
            failure = _follow(state, realtime)
        finally:
            realtime.close()
            state.save()
        if failure is not None:
            raise _why_stopped(client, args.channels[0], failure)
    return 0


def _subscribe(realtime: RealtimeClient, state: _Tail, channel: str) -> Subscription:
    def on_publication(pub: Publication) -> None:
        state.on_publication(channel, pub)

    def on_recovery_failed(_name: str) -> None:
        state.on_recovery_failed(channel)

    return realtime.subscribe(
        _PREFIX + channel,
        on_publication,
        on_recovery_failed=on_recovery_failed,
        since=state.positions.get(channel),
    )


def _follow(state: _Tail, realtime: RealtimeClient) -> RealtimeError | None:
    """Wait for a signal, ``--count`` or a final error; returns the error, if one."""
    while not state.stop.wait(_TICK):
        state.adopt_start_positions()
        if realtime.error is not None:
            return realtime.error
        for sub in state.subs.values():
            if sub.error is not None:
                return sub.error
    return None


def _why_stopped(client: ChatClient, channel: str, failure: RealtimeError) -> Exception:
    """The error to report when realtime stopped for good: was it the key?"""
    try:
        client.list_messages(channel, limit=1)
    except (UnauthorizedError, ForbiddenError) as exc:
        return exc
    except ChatSDKError:
        pass
    return CommandError(
        NOPERM if failure.code == 3500 else UNAVAILABLE, f"realtime stopped: {failure}"
    )
