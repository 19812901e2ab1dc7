"""A forked child (gunicorn --preload, Celery prefork) never shares the parent's sockets."""

from __future__ import annotations

import os

import pytest

from chatsdk import ChatClient
from chatsdk.testing import ReferenceServer

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns on fork() with threads running (the server's): that is the point.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def test_a_forked_child_gets_its_own_connections() -> None:
    with ReferenceServer() as srv, ChatClient(srv.url, "test-key") as chat:
        chat.send_message("general", "parent before fork")
        parent_pool = chat.session.adapter.poolmanager
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, never return into pytest
            status = 1
            try:
                fresh = chat.session.adapter.poolmanager is not parent_pool
                chat.send_message("general", "from the child")
                os.write(write, b"fresh" if fresh else b"shared")
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        report = os.read(read, 16)
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == b"fresh"
        assert chat.session.adapter.poolmanager is parent_pool
        chat.send_message("general", "parent after fork")
        texts = [m["text"] for m in srv.messages("general")]
        assert texts == ["parent before fork", "from the child", "parent after fork"]
