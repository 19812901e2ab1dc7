"""The drill's REST arms: the same send, done the way people do it today and with chatsdk.

Every arm sends ``POST /api/messages`` bodies that are byte-for-byte the same and uses the
same ``(connect, read)`` timeout; they differ only in what happens when an attempt fails:

- :class:`RequestsArm`: ``requests`` as-is (``HTTPAdapter`` default: no retry, no key);
- :class:`Urllib3Arm`: ``requests`` with urllib3 ``Retry(total=5, backoff_factor=0.1,
  status_forcelist=[408, 429, 500, 502, 503, 504], allowed_methods=None)``, the usual
  "retry everything" fix (no key either: that is what the fix usually looks like);
- :class:`ChatsdkArm`: :meth:`chatsdk.ChatClient.send_message` with the default policies
  (one ``Idempotency-Key`` per operation), optionally with the circuit breaker off;
- :class:`OutboxArm`: :meth:`chatsdk.ChatClient.queue_message`, then ``flush``.

Each arm calls :meth:`~chatsdk.cli._drill._measure.ArmRecorder.attempt` for every HTTP send and
reports its retry waits to the recorder.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from typing import Any, ClassVar

import attrs
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from chatsdk._client import ChatClient
from chatsdk._errors import ChatSDKError
from chatsdk._http.session import ChatSession
from chatsdk.cli._drill._measure import ArmRecorder, count_attempts

__all__ = [
    "Arm",
    "ChatsdkArm",
    "DrainOutcome",
    "OutboxArm",
    "RequestsArm",
    "Urllib3Arm",
]

log = logging.getLogger(__name__)

Timeout = tuple[float, float]

#: The statuses the usual urllib3 fix retries.
URLLIB3_STATUS_FORCELIST = (408, 429, 500, 502, 503, 504)


@attrs.frozen
class DrainOutcome:
    """What an asynchronous arm left undone after its drain.

    Attributes:
        failed: operations the SDK gave up on (caller-visible errors).
        pending: operations still waiting when the drain timed out.
    """

    failed: int = 0
    pending: int = 0


class Arm:
    """One way of sending a message. Subclasses implement :meth:`send`.

    Args:
        url: the arm's server.
        api_key: its key.
        timeout: ``(connect, read)`` seconds for every attempt.
        recorder: the arm's tallies.
    """

    name: ClassVar[str] = "arm"
    #: Whether the arm sends an idempotency key (multi-tap passes the same key every time).
    uses_key: ClassVar[bool] = False

    def __init__(self, url: str, api_key: str, timeout: Timeout, recorder: ArmRecorder) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.recorder = recorder

    def send(self, channel: str, text: str, key: str | None) -> bool:
        """One operation; True when the caller saw success. Never raises.

        ``key`` is the multi-tap scenario's idempotency key for this message (the same for
        every submission of it), or None to let the arm do what it does by default.
        """
        raise NotImplementedError

    def drain(self, timeout: float) -> DrainOutcome:
        """Wait for asynchronous work (the outbox); synchronous arms have none."""
        return DrainOutcome()

    def close(self) -> None:
        """Release connections and threads."""


class _RequestsBase(Arm):
    """A ``requests.Session`` per worker thread (Sessions are not meant to be shared)."""

    def __init__(self, url: str, api_key: str, timeout: Timeout, recorder: ArmRecorder) -> None:
        super().__init__(url, api_key, timeout, recorder)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _adapter(self) -> HTTPAdapter:
        raise NotImplementedError

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # loopback only: no proxy from the environment
            adapter = self._adapter()
            count_attempts(adapter, self.recorder)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["X-API-Key"] = self.api_key
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def send(self, channel: str, text: str, key: str | None) -> bool:
        body: dict[str, Any] = {
            "channelId": channel,
            "text": text,
            "attachments": [],
            "parentId": None,
        }
        try:
            response = self._session().post(
                f"{self.url}/api/messages", json=body, timeout=self.timeout
            )
        except requests.RequestException as exc:
            log.debug("%s: %s", self.name, type(exc).__name__)
            return False
        return 200 <= response.status_code < 300

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


class RequestsArm(_RequestsBase):
    """Plain ``requests``: one attempt, no key (``HTTPAdapter``'s default ``max_retries=0``)."""

    name = "requests (no retry)"

    def _adapter(self) -> HTTPAdapter:
        return HTTPAdapter()


class Urllib3Arm(_RequestsBase):
    """``requests`` with the usual urllib3 ``Retry`` on every method, no key."""

    name = "requests + urllib3 Retry(5)"

    def _adapter(self) -> HTTPAdapter:
        return HTTPAdapter(max_retries=recording_retry(self.recorder))


def recording_retry(recorder: ArmRecorder) -> Retry:
    """The usual ``Retry(total=5, backoff_factor=0.1, ...)``, timing each wait it sleeps.

    ``Retry.new`` rebuilds instances with ``type(self)``, so the subclass survives
    ``increment``; the recorder is a class attribute for that reason.
    """

    class RecordingRetry(Retry):
        def sleep(self, response: Any = None) -> None:
            start = time.monotonic()
            super().sleep(response)
            recorder.wait(time.monotonic() - start)

    return RecordingRetry(
        total=5,
        backoff_factor=0.1,
        status_forcelist=URLLIB3_STATUS_FORCELIST,
        allowed_methods=None,
    )


class ChatsdkArm(Arm):
    """:meth:`chatsdk.ChatClient.send_message` with the default retry (and breaker) policy.

    Args:
        breaker: False turns the circuit breaker off (the outage comparison); True keeps
            the SDK's default.
    """

    name = "chatsdk send_message"
    uses_key = True

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: Timeout,
        recorder: ArmRecorder,
        *,
        breaker: bool = True,
    ) -> None:
        super().__init__(url, api_key, timeout, recorder)
        options: dict[str, Any] = {"timeout": timeout, "sleep": recorder.sleep}
        if not breaker:
            options["breaker"] = False
        self.session = ChatSession(url, api_key, **options)
        self.session.trust_env = False
        count_attempts(self.session.adapter, recorder)
        self.client = self._client()

    def _client(self) -> ChatClient:
        return ChatClient(session=self.session)

    def send(self, channel: str, text: str, key: str | None) -> bool:
        try:
            self.client.send_message(channel, text, idempotency_key=key)
        except ChatSDKError as exc:
            log.debug("%s: %s", self.name, type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        self.client.close()


class ChatsdkNoBreakerArm(ChatsdkArm):
    """:class:`ChatsdkArm` with ``breaker=False``."""

    name = "chatsdk send_message (breaker off)"

    def __init__(self, url: str, api_key: str, timeout: Timeout, recorder: ArmRecorder) -> None:
        super().__init__(url, api_key, timeout, recorder, breaker=False)


class OutboxArm(ChatsdkArm):
    """``queue_message`` (returns once the entry is on disk), then ``flush`` at the end.

    The outbox file lives in a fresh temporary directory, removed by :meth:`close`.
    """

    name = "chatsdk outbox (queue_message + flush)"

    def _client(self) -> ChatClient:
        self._dir = tempfile.TemporaryDirectory(prefix="chatsdk-drill-")
        path = os.path.join(self._dir.name, "outbox.db")
        outbox: Any = path
        return ChatClient(session=self.session, outbox=outbox)

    def send(self, channel: str, text: str, key: str | None) -> bool:
        try:
            self.client.queue_message(channel, text, idempotency_key=key)
        except ChatSDKError as exc:
            log.warning("%s: queue_message failed: %s", self.name, exc)
            return False
        return True

    def drain(self, timeout: float) -> DrainOutcome:
        drained = self.client.flush(timeout)
        outbox = self.client.outbox
        if outbox is None:  # pragma: no cover - built with one above
            return DrainOutcome()
        stats = outbox.stats()
        failed = stats.failed + stats.expired
        pending = stats.pending
        if not drained:
            log.warning("%s: %d entries still pending after %.0fs", self.name, pending, timeout)
        return DrainOutcome(failed=failed, pending=pending)

    def close(self) -> None:
        self.client.close_timeout = 0.0
        self.client.close()
        self._dir.cleanup()
