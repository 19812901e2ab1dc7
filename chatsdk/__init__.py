"""chatsdk: a synchronous, requests-style SDK for the ChatSDK chat API.

A message you hand to chatsdk arrives, once, even on a terrible network; when it cannot
arrive yet, nothing is lost and the caller is told the truth at once.
"""

from __future__ import annotations

import logging

from chatsdk._client import ChatClient
from chatsdk._errors import (
    APIError,
    BadRequestError,
    ChatSDKError,
    CircuitBreakerOpenError,
    ConfigurationError,
    ConflictError,
    ConnectError,
    ConnectTimeoutError,
    ForbiddenError,
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidResponseError,
    NotFoundError,
    OutboxCorruptError,
    OutboxEntryExpiredError,
    OutboxError,
    OutboxFileError,
    OutboxUnavailableError,
    PayloadTooLargeError,
    RateLimitedError,
    RealtimeError,
    RequestTimeoutError,
    ServerError,
    TLSCertificateError,
    TooManyRedirectsError,
    TransportError,
    TransportTimeoutError,
    UnauthorizedError,
    UnprocessableEntityError,
    ValidationError,
    WaitTimeoutError,
)
from chatsdk._http.adapter import ResilientAdapter, Transport
from chatsdk._http.idempotency import idempotency_key_for
from chatsdk._http.response import DEFAULT_MAX_RESPONSE_BYTES
from chatsdk._http.retry import (
    DEFAULT_RETRY_POLICY,
    RetryPolicy,
    calculate_backoff,
    parse_retry_after,
    retry_call,
    should_retry,
)
from chatsdk._http.session import ChatSession
from chatsdk._instrument import (
    AttemptFinished,
    BreakerStateChanged,
    EventHook,
    OutboxBacklog,
    OutboxDeadLettered,
    OutboxDelivered,
    OutboxEnqueued,
    RealtimeReconnecting,
    RealtimeStateChanged,
    RecoveryFailed,
    RetryScheduled,
    SDKEvent,
    add_event_hook,
    remove_event_hook,
)
from chatsdk._models import Attachment, Message, Reaction
from chatsdk._outbox.models import FlushResult
from chatsdk._outbox.outbox import Outbox, OutboxEntry, OutboxStats
from chatsdk._realtime.client import RealtimeClient, RealtimeState, RealtimeStats
from chatsdk._realtime.events import ChatEvent, MessageEvent, ReactionEvent
from chatsdk._realtime.subscription import (
    Publication,
    StreamPosition,
    Subscription,
    SubscriptionState,
)
from chatsdk._resilience.breaker import (
    BreakerPolicy,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitState,
    Permit,
)
from chatsdk._resilience.budget import RetryBudget
from chatsdk._shutdown import install_signal_handlers
from chatsdk._version import __version__

__all__ = [
    "APIError",
    "Attachment",
    "AttemptFinished",
    "BadRequestError",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerStateChanged",
    "ChatClient",
    "ChatEvent",
    "ChatSDKError",
    "ChatSession",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "CircuitState",
    "ConfigurationError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeoutError",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_RETRY_POLICY",
    "EventHook",
    "FlushResult",
    "ForbiddenError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyReusedError",
    "InvalidResponseError",
    "Message",
    "MessageEvent",
    "NotFoundError",
    "Outbox",
    "OutboxBacklog",
    "OutboxCorruptError",
    "OutboxDeadLettered",
    "OutboxDelivered",
    "OutboxEnqueued",
    "OutboxEntry",
    "OutboxEntryExpiredError",
    "OutboxError",
    "OutboxFileError",
    "OutboxStats",
    "OutboxUnavailableError",
    "PayloadTooLargeError",
    "Permit",
    "Publication",
    "RateLimitedError",
    "Reaction",
    "ReactionEvent",
    "RealtimeClient",
    "RealtimeError",
    "RealtimeReconnecting",
    "RealtimeState",
    "RealtimeStateChanged",
    "RealtimeStats",
    "RecoveryFailed",
    "RequestTimeoutError",
    "ResilientAdapter",
    "RetryBudget",
    "RetryPolicy",
    "RetryScheduled",
    "SDKEvent",
    "ServerError",
    "StreamPosition",
    "Subscription",
    "SubscriptionState",
    "TLSCertificateError",
    "TooManyRedirectsError",
    "Transport",
    "TransportError",
    "TransportTimeoutError",
    "UnauthorizedError",
    "UnprocessableEntityError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
    "add_event_hook",
    "calculate_backoff",
    "idempotency_key_for",
    "install_signal_handlers",
    "parse_retry_after",
    "remove_event_hook",
    "retry_call",
    "should_retry",
]

logging.getLogger("chatsdk").addHandler(logging.NullHandler())
