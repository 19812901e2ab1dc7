"""Classification, backoff, Retry-After parsing and retry_call (the original design's cases)."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from typing import TypeVar

import attrs
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from chatsdk import (
    DEFAULT_RETRY_POLICY,
    APIError,
    BadRequestError,
    ConnectError,
    IdempotencyKeyInUseError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TransportTimeoutError,
    calculate_backoff,
    parse_retry_after,
    retry_call,
    should_retry,
)
from chatsdk._http.retry import backoff_for, classify

E = TypeVar("E", bound=BaseException)

NO_JITTER = RetryPolicy(jitter="none")


def keyed_post() -> requests.PreparedRequest:
    return requests.Request(
        "POST", "http://chat.test/api/messages", headers={"Idempotency-Key": "k1"}
    ).prepare()


def unkeyed_post() -> requests.PreparedRequest:
    return requests.Request("POST", "http://chat.test/api/messages").prepare()


def api_error(status: int, code: str | None = None, request: object = None) -> APIError:
    cls = ServerError if status >= 500 else APIError
    return cls(status, code, "boom", request=request or keyed_post())


def keyed(error: E) -> E:
    """The error as the adapter raises it: carrying its (keyed) request."""
    error.request = keyed_post()  # type: ignore[attr-defined]
    return error


class TestShouldRetry:
    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_retryable_statuses(self, status: int) -> None:
        assert should_retry(api_error(status), 1)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
    def test_client_errors_are_final(self, status: int) -> None:
        assert not should_retry(api_error(status), 1)

    def test_409_key_in_use_is_retried(self) -> None:
        err = IdempotencyKeyInUseError(409, "idempotency_key_in_use", "busy")
        assert should_retry(err, 1)

    def test_transport_errors_are_retried(self) -> None:
        assert should_retry(keyed(ConnectError("refused")), 1)
        assert should_retry(keyed(TransportTimeoutError("slow")), 1)

    def test_foreign_errors_are_not_retried(self) -> None:
        assert not should_retry(ValueError("x"), 1)
        assert not should_retry(requests.ConnectionError("not ours"), 1)

    def test_stops_at_max_attempts(self) -> None:
        err = api_error(500)
        assert should_retry(err, 4)
        assert not should_retry(err, 5)
        assert not should_retry(err, 6)
        assert should_retry(err, 5, RetryPolicy(max_attempts=6))

    def test_custom_statuses(self) -> None:
        policy = RetryPolicy(retry_statuses=frozenset({418}))
        assert should_retry(api_error(418), 1, policy)
        assert not should_retry(api_error(500), 1, policy)


class TestPossiblyProcessed:
    """An error whose request may have been processed is retried only when resending is safe."""

    def test_unkeyed_post_is_not_retried_after_a_read_timeout(self) -> None:
        # Before: should_retry said yes, and retry_call posted the message twice.
        timeout = TransportTimeoutError("read timed out", request=unkeyed_post())
        assert not should_retry(timeout, 1)
        assert should_retry(timeout, 1, idempotency_key="k1")
        assert should_retry(timeout, 1, method="GET")

    def test_unkeyed_post_is_not_retried_after_a_500(self) -> None:
        assert not should_retry(api_error(500, request=unkeyed_post()), 1)

    def test_unkeyed_post_is_retried_when_nothing_was_processed(self) -> None:
        refused = ConnectError("refused", request=unkeyed_post())
        refused.request_sent = False
        assert should_retry(refused, 1)
        assert should_retry(api_error(503, request=unkeyed_post()), 1)
        assert should_retry(api_error(429, request=unkeyed_post()), 1)

    def test_an_error_without_its_request_is_not_resent_blindly(self) -> None:
        assert not should_retry(TransportTimeoutError("slow"), 1)
        assert not should_retry(ServerError(500, None, "x"), 1)
        assert should_retry(ServerError(503, None, "x"), 1)

    def test_retry_call_does_not_repeat_an_unkeyed_post(self) -> None:
        calls: list[int] = []

        def post() -> None:
            calls.append(1)
            raise TransportTimeoutError("read timed out", request=unkeyed_post())

        with pytest.raises(TransportTimeoutError):
            retry_call(post, sleep=_no_sleep)
        assert calls == [1]


class TestClassificationTable:
    @pytest.mark.parametrize(
        ("status", "host_failure", "permanent"),
        [
            (200, "success", False),
            (400, "success", True),
            (401, "success", False),
            (404, "success", True),
            (408, "failure", False),
            (409, "success", True),
            (413, "success", True),
            (422, "success", True),
            (429, "neutral", False),
            (500, "failure", False),
            (501, "success", True),
            (503, "failure", False),
            (418, "success", True),
        ],
    )
    def test_statuses(self, status: int, host_failure: str, permanent: bool) -> None:
        response = requests.Response()
        response.status_code = status
        response._content = b"{}"
        response.request = keyed_post()
        verdict = classify(response)
        assert (verdict.breaker, verdict.permanent) == (host_failure, permanent)
        assert verdict.retry is (status in DEFAULT_RETRY_POLICY.retry_statuses)

    def test_a_status_the_policy_retries_is_not_permanent(self) -> None:
        policy = RetryPolicy(retry_statuses=frozenset({418}))
        assert not classify(api_error(418), policy).permanent

    def test_foreign_errors_are_permanent_and_say_nothing_about_the_host(self) -> None:
        verdict = classify(RuntimeError("bug"))
        assert (verdict.retry, verdict.breaker, verdict.permanent) == (False, "neutral", True)


class TestBackoff:
    def test_exponential_table(self) -> None:
        table = [calculate_backoff(i, NO_JITTER) for i in range(5)]
        assert table == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])

    def test_caps_at_max_delay(self) -> None:
        policy = RetryPolicy(jitter="none", max_delay=1.0)
        table = [calculate_backoff(i, policy) for i in range(5)]
        assert table == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
        assert calculate_backoff(10, policy) == 1.0
        assert calculate_backoff(10_000, policy) == 1.0

    def test_negative_index_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="attempt_index"):
            calculate_backoff(-1)

    @given(st.integers(0, 40), st.floats(0, 1, exclude_max=True))
    def test_jitter_bounds(self, index: int, u: float) -> None:
        d = min(10.0, 0.1 * 2**index)
        full = calculate_backoff(index, RetryPolicy(jitter="full"), rand=lambda: u)
        equal = calculate_backoff(index, RetryPolicy(jitter="equal"), rand=lambda: u)
        additive = calculate_backoff(index, RetryPolicy(jitter="additive"), rand=lambda: u)
        assert 0 <= full <= d
        assert d / 2 <= equal <= d
        assert d <= additive <= d * 1.5

    def test_jitter_varies(self) -> None:
        # The original design's "different calls have different jitter".
        delays = {calculate_backoff(2, RetryPolicy(jitter="additive")) for _ in range(20)}
        assert len(delays) > 1
        assert all(0.4 <= d <= 0.6 for d in delays)

    def test_default_policy_is_full_jitter(self) -> None:
        assert DEFAULT_RETRY_POLICY.jitter == "full"
        assert calculate_backoff(3, rand=lambda: 0.5) == pytest.approx(0.4)

    def test_retry_after_is_the_minimum_wait(self) -> None:
        assert backoff_for(None, 0, NO_JITTER, retry_after=2.0) == 2.0
        assert backoff_for(None, 4, NO_JITTER, retry_after=0.5) == pytest.approx(1.6)
        ignoring = attrs.evolve(NO_JITTER, respect_retry_after=False)
        assert backoff_for(None, 0, ignoring, retry_after=2.0) == pytest.approx(0.1)
        limited = RateLimitedError(429, "rate_limited", "slow down")
        limited.retry_after = 3.0
        assert backoff_for(limited, 0, NO_JITTER) == 3.0


class TestPolicyValidation:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_attempts": 0},
            {"max_attempts": True},
            {"base_delay": -1},
            {"jitter": "random"},
            {"retry_statuses": {500}},
            {"retry_statuses": frozenset({99})},
            {"deadline": 0},
            {"budget_capacity": 0},
            {"budget_refund": -0.1},
        ],
    )
    def test_bad_values(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]

    def test_frozen_and_keyword_only(self) -> None:
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            DEFAULT_RETRY_POLICY.max_attempts = 3  # type: ignore[misc]
        with pytest.raises(TypeError):
            RetryPolicy(3)  # type: ignore[misc]


class TestParseRetryAfter:
    NOW = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.timezone.utc)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("3", 3.0), (" 0 ", 0.0), ("1.5", 1.5), ("120", 120.0)],
    )
    def test_delay_seconds(self, value: str, expected: float) -> None:
        assert parse_retry_after(value) == expected

    def test_http_date(self) -> None:
        later = email.utils.format_datetime(self.NOW + dt.timedelta(seconds=30), usegmt=True)
        assert parse_retry_after(later, now=self.NOW) == pytest.approx(30.0)

    def test_http_date_in_the_past_is_zero(self) -> None:
        earlier = email.utils.format_datetime(self.NOW - dt.timedelta(hours=1), usegmt=True)
        assert parse_retry_after(earlier, now=self.NOW) == 0.0

    def test_date_without_zone_is_utc(self) -> None:
        assert parse_retry_after("Sat, 28 Nov 2026 12:00:10 -0000", now=self.NOW) == 10.0

    @pytest.mark.parametrize("value", [None, "", "-1", "soon", "nan", "inf", "Mon, 99 Foo"])
    def test_garbage_is_ignored(self, value: str | None) -> None:
        assert parse_retry_after(value, now=self.NOW) is None

    @given(st.text(max_size=40))
    def test_never_raises(self, value: str) -> None:
        result = parse_retry_after(value, now=self.NOW)
        assert result is None or result >= 0

    @given(st.integers(0, 10**6))
    def test_integers_round_trip(self, seconds: int) -> None:
        assert parse_retry_after(str(seconds)) == seconds


class TestRetryCall:
    def test_succeeds_first_time(self) -> None:
        calls: list[int] = []
        assert retry_call(lambda: calls.append(1) or "ok", sleep=_no_sleep) == "ok"
        assert calls == [1]

    def test_retries_transient_then_succeeds(self) -> None:
        attempts = iter(
            [keyed(ServerError(500, "internal", "x")), ServerError(503, None, "x"), None]
        )
        slept: list[float] = []

        def fn() -> str:
            error = next(attempts)
            if error is not None:
                raise error
            return "ok"

        assert retry_call(fn, NO_JITTER, sleep=slept.append) == "ok"
        assert slept == pytest.approx([0.1, 0.2])

    def test_client_error_is_not_retried(self) -> None:
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise BadRequestError(400, "invalid_request", "text: bad")

        with pytest.raises(BadRequestError) as info:
            retry_call(fn, sleep=_no_sleep)
        assert calls == [1]
        assert info.value.attempts == 1

    def test_gives_up_after_max_attempts_with_the_real_error(self) -> None:
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise keyed(ServerError(500, "internal", f"failure {len(calls)}"))

        with pytest.raises(ServerError, match="failure 5") as info:
            retry_call(fn, sleep=_no_sleep)
        assert len(calls) == 5
        assert info.value.attempts == 5

    def test_foreign_exception_propagates_once(self) -> None:
        calls: list[int] = []

        def fn() -> None:
            calls.append(1)
            raise KeyError("x")

        with pytest.raises(KeyError):
            retry_call(fn, sleep=_no_sleep)
        assert calls == [1]

    def test_retry_after_is_honoured_and_capped(self) -> None:
        slept: list[float] = []
        errors = [_limited(2.0), _limited(61.0)]

        def fn() -> None:
            raise errors.pop(0)

        with pytest.raises(RateLimitedError) as info:
            retry_call(fn, NO_JITTER, sleep=slept.append)
        assert slept == [2.0]
        assert info.value.retry_after == 61.0
        assert info.value.attempts == 2

    def test_logs_each_retry(self, caplog: pytest.LogCaptureFixture) -> None:
        errors = [keyed(ConnectError("refused")), None]

        def fn() -> str:
            error = errors.pop(0)
            if error:
                raise error
            return "ok"

        with caplog.at_level(logging.INFO, logger="chatsdk"):
            retry_call(fn, sleep=_no_sleep)
        assert "attempt 1 failed (ConnectError)" in caplog.text


def _limited(seconds: float) -> RateLimitedError:
    error = RateLimitedError(429, "rate_limited", "slow down")
    error.retry_after = seconds
    return error


def _no_sleep(_seconds: float) -> None:
    pass
