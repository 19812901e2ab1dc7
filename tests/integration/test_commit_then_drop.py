"""A real loopback server that commits a message and then resets the connection.

This is the case that makes duplicates in naive clients: the message exists, the response is
lost. ChatClient must retry under the same Idempotency-Key and the server must end up holding
exactly one message.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from chatsdk import ChatClient, ChatSession, ConnectError, RetryPolicy


class CommitThenDropServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, drops: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.messages: dict[str, dict[str, object]] = {}  # by idempotency key
        self.unkeyed: list[dict[str, object]] = []
        self.drops_left = drops
        self.posts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: CommitThenDropServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers.get("Idempotency-Key")
        with self.server.lock:
            self.server.posts += 1
            replayed = key is not None and key in self.server.messages
            if not replayed:
                message = {
                    "id": str(uuid.uuid4()),
                    "channelId": body["channelId"],
                    "text": body["text"],
                    "attachments": [],
                    "parentId": None,
                    "userId": "u1",
                    "createdAt": "2026-11-28T12:00:00Z",
                    "updatedAt": None,
                }
                if key is None:
                    self.server.unkeyed.append(message)
                else:
                    self.server.messages[key] = message
            stored = self.server.messages[key] if key is not None else self.server.unkeyed[-1]
            drop = self.server.drops_left > 0
            if drop:
                self.server.drops_left -= 1
        if drop:
            # Committed; now lose the response: RST instead of an answer.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        payload = json.dumps(stored).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if replayed:
            self.send_header("Idempotent-Replayed", "true")
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def drop_server() -> Iterator[CommitThenDropServer]:
    server = CommitThenDropServer(drops=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def no_sleep(_seconds: float) -> None:
    pass


def test_client_retries_with_the_same_key_and_the_server_holds_one(drop_server) -> None:
    session = ChatSession(drop_server.url, "test-key", sleep=no_sleep)
    with ChatClient(session=session) as client:
        message = client.send_message("general", "hello once")
    assert message.replayed  # the answer came from the stored first request
    assert drop_server.posts == 3
    assert len(drop_server.messages) == 1 and drop_server.unkeyed == []
    assert next(iter(drop_server.messages.values()))["id"] == message.id


def test_naive_requests_loses_the_response_and_a_manual_retry_duplicates(drop_server) -> None:
    drop_server.drops_left = 1
    with pytest.raises(requests.ConnectionError):
        requests.post(
            f"{drop_server.url}/api/messages", json={"channelId": "c", "text": "t"}, timeout=5
        )
    requests.post(
        f"{drop_server.url}/api/messages", json={"channelId": "c", "text": "t"}, timeout=5
    )
    assert len(drop_server.unkeyed) == 2  # what chatsdk exists to prevent


def test_raw_session_post_without_a_key_is_not_retried_after_a_drop(drop_server) -> None:
    drop_server.drops_left = 1
    with ChatSession(drop_server.url, "test-key", sleep=no_sleep) as session:
        with pytest.raises(ConnectError) as info:
            session.post("/api/messages", json={"channelId": "c", "text": "t"})
    assert info.value.attempts == 1
    assert len(drop_server.unkeyed) == 1


def test_refused_connections_are_retried_then_reported(sleep, clock) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: connections are refused
    session = ChatSession(
        f"http://127.0.0.1:{port}", "k", sleep=sleep, clock=clock, retry=RetryPolicy(max_attempts=3)
    )
    with ChatClient(session=session) as client, pytest.raises(ConnectError) as info:
        client.send_message("c", "t")
    assert info.value.attempts == 3
    assert info.value.request_sent is False
    assert len(sleep.calls) == 2
