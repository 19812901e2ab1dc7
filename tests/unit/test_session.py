"""ChatSession: URL joining, the API key's reach, defaults, requests compatibility."""

from __future__ import annotations

import pytest
import responses

from chatsdk import ChatSession, ConfigurationError, ResilientAdapter
from chatsdk._http.retry import DEFAULT_RETRY_POLICY
from chatsdk._http.session import DEFAULT_TIMEOUT, normalize_base_url

KEY = "sk-secret-key-123"


@responses.activate
def test_relative_urls_join_the_base_url_and_carry_the_key() -> None:
    responses.add(responses.GET, "http://chat.test/prefix/api/health", json={"status": "ok"})
    with ChatSession("http://chat.test/prefix", KEY) as session:
        assert session.get("/api/health").status_code == 200
        assert session.get("api/health").status_code == 200
    for call in responses.calls:
        assert call.request.headers["X-API-Key"] == KEY
        assert call.request.headers["User-Agent"].startswith("chatsdk/")


@responses.activate
def test_the_key_is_never_sent_to_another_origin() -> None:
    for url in ("http://other.test/x", "http://chat.test:8080/x", "https://chat.test/x"):
        responses.add(responses.GET, url, body="ok")
    with ChatSession("http://chat.test", KEY) as session:
        for url in ("http://other.test/x", "http://chat.test:8080/x", "https://chat.test/x"):
            session.get(url)
    assert all("X-API-Key" not in c.request.headers for c in responses.calls)


@responses.activate
def test_the_key_is_dropped_across_a_redirect_to_another_origin() -> None:
    responses.add(
        responses.GET,
        "http://chat.test/api/go",
        status=302,
        headers={"Location": "http://evil.test/steal"},
    )
    responses.add(responses.GET, "http://evil.test/steal", body="ok")
    responses.add(
        responses.GET,
        "http://chat.test/api/same",
        status=302,
        headers={"Location": "http://chat.test/api/health"},
    )
    responses.add(responses.GET, "http://chat.test/api/health", json={"status": "ok"})
    with ChatSession("http://chat.test", KEY) as session:
        session.get("/api/go")
        session.get("/api/same")
    sent = [(c.request.url, "X-API-Key" in c.request.headers) for c in responses.calls]
    assert sent == [
        ("http://chat.test/api/go", True),
        ("http://evil.test/steal", False),
        ("http://chat.test/api/same", True),
        ("http://chat.test/api/health", True),
    ]


@responses.activate
def test_an_explicit_timeout_and_headers_are_respected() -> None:
    responses.add(responses.GET, "http://chat.test/api/health", json={"status": "ok"})
    with ChatSession("http://chat.test", KEY, timeout=4.0) as session:
        session.get("/api/health")
        session.get("/api/health", timeout=(1, 2), headers={"X-Trace": "t"})
    first, second = responses.calls
    assert first.request.req_kwargs["timeout"] == 4.0
    assert second.request.req_kwargs["timeout"] == (1, 2)
    assert second.request.headers["X-Trace"] == "t"


def test_defaults_and_mounts() -> None:
    with ChatSession("http://chat.test") as session:
        assert session.timeout == DEFAULT_TIMEOUT == (3.05, 10.0)
        # Web workers: gunicorn kills a worker after 30 s; a read and a whole operation
        # (retries included) end before that by default.
        assert DEFAULT_TIMEOUT[1] < 30 and DEFAULT_RETRY_POLICY.deadline == 20.0
        assert isinstance(session.get_adapter("http://x"), ResilientAdapter)
        assert isinstance(session.get_adapter("https://x"), ResilientAdapter)
        assert session.get_adapter("http://x").max_retries.total == 0


def test_the_key_is_not_in_repr_or_headers() -> None:
    session = ChatSession("http://chat.test", KEY)
    assert KEY not in repr(session)
    assert "X-API-Key" not in session.headers
    session.close()


@pytest.mark.parametrize(
    "url", ["", "   ", "chat.test", "ftp://chat.test", "http://", "http://h/?q=1", None, 3]
)
def test_bad_base_urls(url: object) -> None:
    with pytest.raises(ConfigurationError):
        normalize_base_url(url)


def test_bad_api_key() -> None:
    with pytest.raises(ConfigurationError, match="api_key"):
        ChatSession("http://chat.test", "")


def test_bytes_urls_work() -> None:
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, "http://chat.test/api/health", json={"status": "ok"})
        with ChatSession("http://chat.test", KEY) as session:
            assert session.get(b"/api/health").ok  # type: ignore[arg-type]


@responses.activate
def test_hooks_verify_and_proxies_behave_as_in_requests() -> None:
    responses.add(responses.GET, "http://chat.test/api/health", json={"status": "ok"})
    seen: list[int] = []
    with ChatSession("http://chat.test", KEY) as session:
        session.hooks["response"].append(lambda r, *a, **k: seen.append(r.status_code))
        session.get("/api/health", verify=False, proxies={"https": "http://proxy.test:3128"})
        session.get("/api/health", hooks={"response": lambda r, *a, **k: seen.append(-1)})
    assert seen == [200, -1]  # as requests: a per-request hook replaces the session's
    first = responses.calls[0].request.req_kwargs
    assert first["verify"] is False


@responses.activate
def test_environment_proxies_apply_as_in_requests_and_are_reread_after_the_ttl(
    monkeypatch: pytest.MonkeyPatch, clock
) -> None:
    responses.add(responses.GET, "http://chat.test/api/health", json={"status": "ok"})
    responses.add(responses.GET, "http://other.test/x", body="ok")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "other.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    with ChatSession("http://chat.test", KEY, clock=clock) as session:
        session.get("/api/health")
        session.get("http://other.test/x")
        monkeypatch.setenv("HTTP_PROXY", "http://proxy2.test:3128")
        session.get("/api/health")  # within the TTL: the settings read a moment ago
        clock.advance(1.0)
        session.get("/api/health")
        session.get("/api/health", proxies={"http": "http://explicit.test:1"})
    kwargs = [c.request.req_kwargs for c in responses.calls]
    assert kwargs[0]["proxies"]["http"] == "http://proxy.test:3128"
    assert "http" not in kwargs[1]["proxies"]  # NO_PROXY
    assert kwargs[2]["proxies"]["http"] == "http://proxy.test:3128"
    assert kwargs[3]["proxies"]["http"] == "http://proxy2.test:3128"
    assert kwargs[4]["proxies"]["http"] == "http://explicit.test:1"
    assert kwargs[0]["verify"] == "/etc/ssl/bundle.pem"


@responses.activate
def test_trust_env_false_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    responses.add(responses.GET, "http://chat.test/api/health", json={"status": "ok"})
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    with ChatSession("http://chat.test", KEY) as session:
        session.trust_env = False
        session.get("/api/health", verify=False)
    assert responses.calls[0].request.req_kwargs["proxies"] == {}
    assert responses.calls[0].request.req_kwargs["verify"] is False


def test_the_environment_cache_is_bounded() -> None:
    with ChatSession("http://chat.test", KEY) as session:
        for i in range(600):
            session._read_environment(f"http://host{i}.test/x", None)
        assert 0 < len(session._environment) <= 256
