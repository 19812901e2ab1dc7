"""TLS and local configuration failures are not transient: no retry, no breaker failure.

Before the classification table, an untrusted certificate, a missing CA bundle, a bad client
certificate path and a broken proxy setting were each retried 5 times and counted against the
host's circuit. A real HTTPS server (a throwaway CA from trustme) stands in for the host.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator

import pytest
import requests
import trustme

from chatsdk import (
    ChatClient,
    ChatSession,
    ConfigurationError,
    TLSCertificateError,
    TransportError,
)

KEY = "test-key"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_url(ca: trustme.CA) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_ca_bundle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override ``session.verify``.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"a configuration error must not be retried (slept {seconds})")


def _breaker_failures(session: ChatSession) -> int:
    breaker = session.breaker_for()
    assert breaker is not None
    return breaker.snapshot().failure_count


def test_a_trusted_certificate_works(https_url: str, ca: trustme.CA, tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with ChatSession(https_url, KEY, sleep=_no_sleep) as session:
        session.verify = str(bundle)
        assert session.get("/api/health").json() == {"status": "ok"}


def test_an_untrusted_certificate_is_not_retried_nor_a_host_failure(https_url: str) -> None:
    with ChatSession(https_url, KEY, sleep=_no_sleep) as session:
        with pytest.raises(TLSCertificateError) as info:
            session.get("/api/health")
        assert isinstance(info.value, TransportError)
        assert isinstance(info.value, requests.exceptions.SSLError)
        assert info.value.attempts == 1
        assert _breaker_failures(session) == 0


def test_the_client_raises_it_too(https_url: str) -> None:
    chat = ChatClient(session=ChatSession(https_url, KEY, sleep=_no_sleep))
    with pytest.raises(TLSCertificateError):
        chat.list_messages("c1")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("verify", "/no/such/ca-bundle.pem"),
        ("cert", "/no/such/client-cert.pem"),
    ],
)
def test_missing_certificate_files_are_configuration_errors(
    https_url: str, setting: str, value: str
) -> None:
    with ChatSession(https_url, KEY, sleep=_no_sleep) as session:
        setattr(session, setting, value)
        with pytest.raises(ConfigurationError, match="invalid path"):
            session.get("/api/health")
        assert _breaker_failures(session) == 0


def test_an_unreadable_client_certificate_is_a_configuration_error(
    https_url: str, tmp_path
) -> None:
    garbage = tmp_path / "cert.pem"
    garbage.write_text("this is not a certificate\n")
    with ChatSession(https_url, KEY, sleep=_no_sleep) as session:
        session.cert = str(garbage)
        with pytest.raises(ConfigurationError):
            session.get("/api/health")
        assert _breaker_failures(session) == 0


@pytest.mark.parametrize(
    "proxy",
    [
        "http://",  # no host: requests' InvalidProxyURL
        "gopher://127.0.0.1:1",  # a scheme urllib3 cannot proxy through
    ],
)
def test_a_broken_proxy_setting_is_a_configuration_error(https_url: str, proxy: str) -> None:
    with ChatSession(https_url, KEY, sleep=_no_sleep) as session:
        session.proxies = {"https": proxy}
        session.trust_env = False
        with pytest.raises(ConfigurationError):
            session.get("/api/health")
        assert _breaker_failures(session) == 0
