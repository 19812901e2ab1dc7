"""ChatSession: a requests.Session bound to one ChatSDK base URL."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies

from chatsdk import _fork, _instrument
from chatsdk._errors import CircuitBreakerOpenError, ConfigurationError, TooManyRedirectsError
from chatsdk._http.adapter import ResilientAdapter, Transport
from chatsdk._http.response import DEFAULT_MAX_RESPONSE_BYTES
from chatsdk._http.retry import RetryPolicy
from chatsdk._resilience.breaker import BreakerPolicy, BreakerSnapshot, CircuitBreaker, CircuitState
from chatsdk._resilience.hosts import Listener, host_of
from chatsdk._validation import check_api_key, check_timeout
from chatsdk._version import __version__

__all__ = ["DEFAULT_TIMEOUT", "ChatSession"]

#: (connect, read) seconds used when the caller gives no timeout. The read timeout is well
#: under gunicorn's (and most web servers') 30 s worker timeout, and RetryPolicy's default
#: 20 s deadline bounds a whole operation, retries included, below it too: a stalled server
#: makes a request fail with an error, never gets the worker killed.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)

API_KEY_HEADER = "X-API-Key"

#: Seconds environment settings (proxies, CA bundle) are reused for one host before being
#: read again: requests reads them on every call, which costs more than the SDK itself.
ENVIRONMENT_TTL = 1.0
_ENVIRONMENT_HOSTS = 256

USER_AGENT = (
    f"chatsdk/{__version__} python-requests/{requests.__version__} "
    f"{platform.python_implementation()}/{platform.python_version()}"
)


def _merge(request_setting: Any, session_setting: Any) -> Any:
    return merge_setting(request_setting, session_setting)  # type: ignore[no-untyped-call]


def _reset_after_fork(session: ChatSession) -> None:
    session.adapter.reset_after_fork()


def normalize_base_url(base_url: object) -> str:
    """Check a base URL (``http(s)://host[:port][/prefix]``) and end it with ``/``."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError("base_url must be a non-empty http(s) URL")
    url = base_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment")
    return url if url.endswith("/") else url + "/"


def encode_dot_segments(url: str) -> str:
    """``url`` with each ``.`` or ``..`` path segment percent-encoded (``%2E``, ``%2E%2E``).

    ``PreparedRequest.prepare_url`` resolves literal dot segments (urllib3's ``parse_url``)
    and then turns ``%2E`` back into ``.`` (``requote_uri`` unquotes unreserved characters),
    so a segment sent as ``%2E%2E`` would reach the server as ``..``; the ones left in a
    prepared URL are those the caller encoded, and are encoded again here.
    """
    if "/." not in url:  # the common case, without parsing
        return url
    parts = urlsplit(url)
    segments = parts.path.split("/")
    if not any(s in (".", "..") for s in segments):
        return url
    path = "/".join("%2E" * len(s) if s in (".", "..") else s for s in segments)
    return urlunsplit(parts._replace(path=path))


class ChatSession(requests.Session):
    """A :class:`requests.Session` for one ChatSDK server, with retries built in.

    Relative URLs are joined to ``base_url``; the ``X-API-Key`` header goes only to the base
    URL's origin (never to another host, nor across a redirect to another origin); a default
    timeout applies when the caller gives none; :class:`ResilientAdapter` is mounted for
    ``http://`` and ``https://``. Everything else behaves as in requests.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8800"``.
        api_key: the API key (kept out of every repr, log and error): 1..4096 visible ASCII
            characters.
        retry: the retry policy (default :data:`chatsdk.DEFAULT_RETRY_POLICY`).
        timeout: default ``(connect, read)`` seconds, or one number for both; infinity (or
            None in the pair) for no limit. NaN, negative or 0: ``ConfigurationError``.
        breaker: the per-host circuit breaker policy; None for the default
            :class:`BreakerPolicy`, False for no circuit breaking.
        sleep: the adapter's sleep between attempts (inject for tests).
        clock: the adapter's monotonic clock (inject for tests).
        transport: makes each single attempt instead of urllib3, beneath the retry loop
            (e.g. ``chatsdk.testing.InMemoryTransport()``).
        max_response_bytes: the most decoded bytes a response body may have (default
            :data:`~chatsdk.DEFAULT_MAX_RESPONSE_BYTES`); see :class:`ResilientAdapter`.

    Raises:
        ConfigurationError: a bad base URL, API key (the message never shows the key) or
            ``max_response_bytes``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | tuple[float, float] | None = None,
        breaker: BreakerPolicy | Literal[False] | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        transport: Transport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        super().__init__()
        self.base_url = normalize_base_url(base_url)
        parts = urlsplit(self.base_url)
        # URLs under this prefix are on the base origin without parsing them again.
        self._origin_prefix = f"{parts.scheme}://{parts.netloc}/"
        # Checked here, not when a header is built: http.client's error for a bad header
        # value quotes the value, and that text reaches logs and the outbox's error columns.
        self._api_key = None if api_key is None else check_api_key(api_key)
        self._environment: dict[tuple[str, str | None], tuple[float, dict[str, str], str | None]]
        self._environment = {}
        self._clock = clock or time.monotonic
        checked = check_timeout(timeout, error=ConfigurationError)
        #: the ``timeout`` of calls that give none (requests' forms: seconds, a pair, a Timeout).
        self.timeout: Any = DEFAULT_TIMEOUT if checked is None else checked
        self.headers["User-Agent"] = USER_AGENT
        options: dict[str, Any] = {}
        if sleep is not None:
            options["sleep"] = sleep
        if clock is not None:
            options["clock"] = clock
        try:
            self.adapter = ResilientAdapter(
                retry,
                breaker=breaker,
                transport=transport,
                max_response_bytes=max_response_bytes,
                **options,
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self._base_host = host_of(self.base_url)
        self.mount("http://", self.adapter)
        self.mount("https://", self.adapter)
        # A forked child gets fresh connection pools (see chatsdk._fork).
        _fork.register(self, order=_fork.ORDER_CLIENT, after_child=_reset_after_fork)

    def __repr__(self) -> str:
        return f"<ChatSession {self.base_url}>"

    @property
    def breakers(self) -> dict[str, BreakerSnapshot]:
        """Each host's breaker name (``rest:http://host:port``) mapped to its snapshot."""
        return self.adapter.hosts.snapshots()

    def breaker_for(self, url: str | None = None, *, kind: str = "rest") -> CircuitBreaker | None:
        """The breaker of ``url``'s host (default: the base URL) for ``kind`` ``rest`` or ``ws``.

        None when circuit breaking is off.
        """
        host = self._base_host if url is None else host_of(url)
        return self.adapter.hosts.breaker(f"{kind}:{host}")

    def add_breaker_listener(self, callback: Listener) -> None:
        """Call ``callback(breaker, old_state, new_state)`` whenever any host's circuit changes."""
        self.adapter.hosts.add_listener(callback)

    def _host(self, url: str) -> str:
        """``scheme://host:port`` of ``url``, without parsing the common case again."""
        return self._base_host if url.startswith(self._origin_prefix) else host_of(url)

    def same_origin(self, url: str) -> bool:
        """True when ``url`` is on the base URL's scheme, host and port."""
        return self._host(url) == self._base_host

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """As :meth:`requests.Session.request`, with ``url`` relative to ``base_url``.

        ``timeout`` is checked before anything is sent: NaN, negative or 0 raise
        ``ValueError``; infinity (or None in a pair) is no limit; None is the session's.
        """
        if isinstance(url, bytes):
            url = url.decode()
        if "://" not in url:
            url = self.base_url + url.lstrip("/")
        positional = len(args) > 6  # requests' order: params ... auth, timeout
        timeout = check_timeout(args[6] if positional else kwargs.get("timeout"))
        timeout = self.timeout if timeout is None else timeout
        if positional:
            args = (*args[:6], timeout, *args[7:])
        else:
            kwargs["timeout"] = timeout
        self._fail_fast(url, kwargs.get("headers"))
        tracer = _instrument.tracer
        if tracer is None:
            return super().request(method, url, *args, **kwargs)
        with tracer.http_scope():  # our attempt spans are the HTTP client spans
            return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """As :meth:`requests.Session.send`; a redirect loop is a :class:`TooManyRedirectsError`."""
        try:
            return super().send(request, **kwargs)
        except requests.TooManyRedirects as exc:  # raised by the outermost send only
            error = TooManyRedirectsError(str(exc), response=exc.response, request=exc.request)
            error.idempotency_key = request.headers.get("Idempotency-Key")
            raise error from exc

    def _fail_fast(self, url: str, headers: Any) -> None:
        """Refuse a call to a host whose circuit is open before any request work is done.

        Merging environment settings (proxies, netrc) alone costs most of a millisecond, so
        the check comes first; the adapter checks again for every attempt.
        """
        host = self._host(url)
        breaker = self.adapter.hosts.breaker(f"rest:{host}")
        if breaker is None or breaker.state is not CircuitState.OPEN:
            return
        error = CircuitBreakerOpenError(breaker.name, breaker.retry_after)
        error.attempts = 0
        if isinstance(headers, Mapping):
            error.idempotency_key = headers.get("Idempotency-Key")
        raise error

    def merge_environment_settings(  # type: ignore[override]
        self,
        url: Any,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        """As requests does, but reading the environment at most once a second per host.

        Proxy variables (``HTTP(S)_PROXY``, ``NO_PROXY``) and ``REQUESTS_CA_BUNDLE`` /
        ``CURL_CA_BUNDLE`` apply exactly as in requests; a change to them is seen within
        :data:`ENVIRONMENT_TTL` seconds.
        """
        if self.trust_env:
            no_proxy = proxies.get("no_proxy") if proxies is not None else None
            env_proxies, env_verify = self._read_environment(str(url), no_proxy)
            if proxies is not None:
                for name, value in env_proxies.items():
                    proxies.setdefault(name, value)
            if verify is True or verify is None:
                verify = env_verify or verify
        return {
            "proxies": _merge(proxies, self.proxies),
            "stream": _merge(stream, self.stream),
            "verify": _merge(verify, self.verify),
            "cert": _merge(cert, self.cert),
        }

    def _read_environment(
        self, url: str, no_proxy: str | None
    ) -> tuple[dict[str, str], str | None]:
        # Proxy selection depends only on the scheme, host and port (and no_proxy).
        key = (self._host(url), no_proxy)
        now = self._clock()
        cached = self._environment.get(key)
        if cached is not None and now - cached[0] < ENVIRONMENT_TTL:
            return cached[1], cached[2]
        env_proxies = get_environ_proxies(url, no_proxy=no_proxy)
        env_verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if len(self._environment) >= _ENVIRONMENT_HOSTS:
            self._environment.clear()
        self._environment[key] = (now, env_proxies, env_verify)
        return env_proxies, env_verify

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """Prepare as requests does, adding the API key only for the base URL's origin.

        A path segment the caller percent-encoded as a dot segment (``%2E``, ``%2E%2E``)
        stays encoded: requests decodes it back to ``.``/``..``, which would reach another
        endpoint (urllib3 already resolved the literal dot segments, as URLs mean).
        """
        prepared = super().prepare_request(request)
        prepared.url = encode_dot_segments(prepared.url or "")
        if self._api_key is not None and self.same_origin(prepared.url or ""):
            prepared.headers.setdefault(API_KEY_HEADER, self._api_key)
        return prepared

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """On a redirect, drop the API key unless the new URL is the base URL's origin."""
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        if not self.same_origin(prepared_request.url or ""):
            prepared_request.headers.pop(API_KEY_HEADER, None)
