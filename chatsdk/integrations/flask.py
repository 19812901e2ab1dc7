"""Flask: ``ChatSDK``, an extension in the style of Flask's extension guide.

::

    from chatsdk.integrations.flask import ChatSDK

    chat = ChatSDK()

    def create_app():
        app = Flask(__name__)
        app.config["CHATSDK_URL"] = "https://chat.example.com"
        chat.init_app(app)
        return app

    @bp.post("/orders")
    def order():
        chat.client.queue_message("orders", "new order")

Settings: ``app.config["CHATSDK_<NAME>"]`` (``CHATSDK_URL``, ``CHATSDK_API_KEY``,
``CHATSDK_OUTBOX``, ``CHATSDK_RETRY``, ``CHATSDK_BREAKER``, ``CHATSDK_TIMEOUT``,
``CHATSDK_CLOSE_TIMEOUT``, ``CHATSDK_DEDUP_WINDOW``, ``CHATSDK_TRANSPORT``,
``CHATSDK_KEY_NAMESPACE``), then the environment variable of the same name, then the
default. The state of each app lives in ``app.extensions["chatsdk"]``; the extension keeps
no reference to any app, so app factories and several apps per process work. Each app's
client is built on first use in the process that uses it (fork-safe under gunicorn
``--preload``) and closed at exit. ``flask chatsdk drain`` and ``flask chatsdk status``
operate the app's outbox.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from chatsdk._client import ChatClient
from chatsdk._errors import ConfigurationError
from chatsdk._outbox.outbox import Outbox
from chatsdk.integrations import _commands
from chatsdk.integrations._holder import ClientHolder
from chatsdk.integrations._settings import MISSING, Settings, build_client, resolve, sent_of

if TYPE_CHECKING:
    from chatsdk.testing import SentLog

__all__ = ["ChatSDK", "ChatSDKState"]

EXTENSION = "chatsdk"


def settings_of(app: Flask) -> Settings:
    """The chatsdk settings of ``app``: ``app.config["CHATSDK_*"]`` > environment > default."""
    config = app.config
    return resolve(
        [(lambda n: config.get(f"CHATSDK_{n}", MISSING), lambda n: f'app.config["CHATSDK_{n}"]')],
        hint=lambda n: f'app.config["CHATSDK_{n}"] (or ${"CHATSDK_" + n})',
    )


class ChatSDKState:
    """One app's chatsdk state, in ``app.extensions["chatsdk"]``.

    Attributes:
        settings: the resolved settings (read at ``init_app``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._holder = ClientHolder(lambda: build_client(self.settings))

    @property
    def client(self) -> ChatClient:
        """The app's client in this process (built on first use)."""
        return self._holder.get()

    def open_outbox(self) -> Outbox | None:
        """The app's outbox opened for inspection (no drainer), or None when none is set."""
        target = self.settings["OUTBOX"]
        return None if not target else Outbox(target)

    @property
    def sent(self) -> SentLog:
        """What the app created, with ``CHATSDK_TRANSPORT = "memory"`` (tests)."""
        return sent_of(self.client, self.settings)

    def close(self) -> None:
        """Close the app's client in this process (a flush bounded by ``CLOSE_TIMEOUT``)."""
        self._holder.close()


class ChatSDK:
    """The chatsdk extension: ``ChatSDK(app)`` or ``chat = ChatSDK(); chat.init_app(app)``."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app``: its state, and the ``flask chatsdk`` commands.

        Raises:
            ConfigurationError: a setting is invalid (e.g. an unconvertible environment value).
        """
        app.extensions[EXTENSION] = ChatSDKState(settings_of(app))
        app.cli.add_command(_cli)

    @staticmethod
    def state(app: Flask | None = None) -> ChatSDKState:
        """The state of ``app`` (default: the current app).

        Raises:
            ConfigurationError: ``init_app`` was not called for that app.
        """
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        state = target.extensions.get(EXTENSION)
        if state is None:
            raise ConfigurationError(
                f"chatsdk is not initialised on app {target.name!r}: call ChatSDK().init_app(app)"
            )
        return state  # type: ignore[no-any-return]

    @property
    def client(self) -> ChatClient:
        """The current app's ChatClient (needs an app context)."""
        return self.state().client

    @property
    def sent(self) -> SentLog:
        """The current app's created messages and reactions, in tests: see ``CHATSDK_TRANSPORT``."""
        return self.state().sent


_cli = AppGroup("chatsdk", help="Operate the app's chatsdk outbox.")


@_cli.command("drain")
@click.option("--once", is_flag=True, help="deliver what is due now, then exit (0 or 75)")
@click.option("--timeout", type=float, default=None, help="with --once: give up after S seconds")
def _drain(once: bool, timeout: float | None) -> None:
    """Deliver the outbox: a worker until SIGTERM, or --once."""
    state = ChatSDK.state()
    code = _commands.drain(
        lambda: state.client,
        state.open_outbox,
        once=once,
        timeout=timeout,
        out=click.echo,
        err=_echo_err,
    )
    sys.exit(code)


@_cli.command("status")
@click.option("--max-age", type=float, default=None, help="exit 75 past this age (seconds)")
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
def _status(max_age: float | None, as_json: bool) -> None:
    """Entries per status; exits 65 on dead letters, 75 past --max-age."""
    state = ChatSDK.state()
    code = _commands.status(
        state.open_outbox, max_age=max_age, as_json=as_json, out=click.echo, err=_echo_err
    )
    sys.exit(code)


def _echo_err(text: str) -> None:
    click.echo(f"chatsdk: {text}", err=True)
