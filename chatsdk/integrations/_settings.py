"""The settings the framework integrations read, and the client they describe.

Every setting is looked up in the framework's own place first (Django's ``CHATSDK`` dict,
then ``CHATSDK_<NAME>``; Flask's ``app.config["CHATSDK_<NAME>"]``; Celery's
``app.conf.chatsdk_<name>``), then in the environment (``CHATSDK_<NAME>``), then the
default: django-anymail's precedence. Values from the environment are strings and are
converted; values from settings are used as given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from chatsdk._client import ChatClient
from chatsdk._errors import ConfigurationError
from chatsdk._http.idempotency import set_default_namespace
from chatsdk._http.retry import RetryPolicy
from chatsdk._resilience.breaker import BreakerPolicy

if TYPE_CHECKING:
    from chatsdk.testing import SentLog

__all__ = ["NAMES", "Lookup", "Settings", "build_client", "resolve", "sent_of"]

#: A lookup of one setting by its name (``"URL"``); returns ``MISSING`` when not set.
Lookup = Callable[[str], Any]
MISSING: Any = object()

#: Every setting: name -> (default, converter for values from the environment).
NAMES: dict[str, tuple[Any, Callable[[str], Any] | None]] = {
    "URL": (None, str),
    "API_KEY": (None, str),
    "OUTBOX": (None, str),
    "RETRY": (None, None),
    "BREAKER": (None, None),
    "TIMEOUT": (None, float),
    "CLOSE_TIMEOUT": (2.0, float),
    "DEDUP_WINDOW": (1.0, float),
    "TRANSPORT": (None, str),
    "KEY_NAMESPACE": (None, str),
}


@attrs.frozen(kw_only=True)
class Settings:
    """The resolved settings, with where each came from (for messages: never the values).

    Attributes:
        values: setting name -> value (defaults filled in).
        sources: setting name -> where it was found (``"CHATSDK['URL']"``, ``"$CHATSDK_URL"``,
            ``"default"``), so errors and checks can name the setting to fix.
    """

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    #: How to set a setting in this framework, e.g. ``CHATSDK["URL"] (or $CHATSDK_URL)``.
    hint: Callable[[str], str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def source(self, name: str) -> str:
        """Where ``name`` was set, or ``"default"``."""
        return self.sources[name]


def resolve(
    lookups: list[tuple[Lookup, Callable[[str], str]]],
    *,
    hint: Callable[[str], str],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting through ``lookups`` (in order), then the environment, then defaults.

    Args:
        lookups: ``(lookup, describe)`` pairs: ``lookup(name)`` gives the value or
            ``MISSING``; ``describe(name)`` names that place for messages.
        hint: how to set a setting, for messages about a missing one.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigurationError: an environment value cannot be converted (naming the variable).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (default, convert) in NAMES.items():
        for lookup, describe in lookups:
            value = lookup(name)
            if value is not MISSING:
                values[name], sources[name] = value, describe(name)
                break
        else:
            var = f"CHATSDK_{name}"
            raw = env.get(var) if convert is not None else None
            if raw:
                try:
                    values[name] = convert(raw) if convert is not None else raw
                except ValueError:
                    raise ConfigurationError(f"${var}={raw!r} is not a valid value") from None
                sources[name] = f"${var}"
            else:
                values[name], sources[name] = default, "default"
    return Settings(values=values, sources=sources, hint=hint)


def _policy(value: Any, cls: type[Any], source: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{source}: {exc}") from exc
    raise ConfigurationError(
        f"{source} must be a {cls.__name__} or a dict of its arguments, got {type(value).__name__}"
    )


def build_client(settings: Settings, **overrides: Any) -> ChatClient:
    """The ChatClient the settings describe (``overrides`` win, e.g. ``outbox=``).

    Also makes ``KEY_NAMESPACE`` the default namespace of ``idempotency_key_for``.

    Raises:
        ConfigurationError: a setting is missing or invalid; the message names it.
    """
    namespace = settings["KEY_NAMESPACE"]
    if namespace is not None:
        try:
            set_default_namespace(namespace)
        except ValueError as exc:
            raise ConfigurationError(f"{settings.source('KEY_NAMESPACE')}: {exc}") from None
    breaker = settings["BREAKER"]
    transport: Any = None
    if settings["TRANSPORT"] not in (None, "", "http"):
        # Only when asked for: chatsdk.testing is not needed in production.
        from chatsdk.testing._mode import transport_from_setting  # noqa: PLC0415

        transport = transport_from_setting(settings["TRANSPORT"])
    options: dict[str, Any] = {
        "base_url": settings["URL"],
        "api_key": settings["API_KEY"],
        "retry": _policy(settings["RETRY"], RetryPolicy, settings.source("RETRY")),
        "breaker": breaker
        if breaker is False
        else _policy(breaker, BreakerPolicy, settings.source("BREAKER")),
        "timeout": settings["TIMEOUT"],
        "outbox": settings["OUTBOX"],
        "close_timeout": settings["CLOSE_TIMEOUT"],
        "dedup_window": settings["DEDUP_WINDOW"],
        "transport": transport,
    }
    options.update(overrides)
    if not options["base_url"]:
        raise ConfigurationError(f"no chat server URL: set {settings.hint('URL')}")
    if not options["api_key"]:
        raise ConfigurationError(f"no API key: set {settings.hint('API_KEY')}")
    return ChatClient(**options)


def sent_of(client: ChatClient, settings: Settings) -> SentLog:
    """The ``sent`` log of a client built with ``TRANSPORT = "memory"``.

    Raises:
        ConfigurationError: the client does not use the in-memory transport.
    """
    from chatsdk.testing import InMemoryTransport  # noqa: PLC0415 - tests only

    transport = client.session.adapter.transport
    if not isinstance(transport, InMemoryTransport):
        raise ConfigurationError(
            f"sent needs the in-memory transport: set {settings.hint('TRANSPORT')} to 'memory'"
        )
    return transport.sent
