"""Test hosts in network namespaces: each a namespace joined to this one by a veth pair.

``ip netns`` needs root (or CAP_NET_ADMIN) and iproute2; :func:`available` says whether
both are here. Each :class:`Host` reaches this namespace at ``host.gateway`` (so servers that
tests start must listen on ``0.0.0.0`` or on the gateway), and :meth:`Host.cut` /
:meth:`Host.restore` take its link down and up: a network partition of that host alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Host", "available", "hosts"]


def available() -> tuple[bool, str]:
    """``(True, "")`` when namespaces can be made here, else ``(False, why)``."""
    if shutil.which("ip") is None:
        return False, "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    probe = f"chatsdk-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return False, f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


def _ip(*argv: str, netns: str | None = None) -> None:
    cmd = ["ip", *argv] if netns is None else ["ip", "netns", "exec", netns, "ip", *argv]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Host:
    """One namespace: processes started with :meth:`command` run "on" this host."""

    netns: str
    link: str  # this side of the veth pair
    gateway: str  # this namespace's address, as the host sees it
    address: str  # the host's own address

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """Take the host's link down: it can reach nothing, nothing can reach it."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` hosts, removed afterwards (their processes must be gone by then)."""
    tag = uuid.uuid4().hex[:5]
    subnet = 16 + int(tag, 16) % 200  # 10.<subnet>.<i>.0/24: unlikely to collide
    made: list[Host] = []
    try:
        for i in range(count):
            host = Host(
                netns=f"chatsdk-{tag}-{i}",
                link=f"cs{tag}{i}a",
                gateway=f"10.{subnet}.{i}.1",
                address=f"10.{subnet}.{i}.2",
            )
            peer = f"cs{tag}{i}b"
            _ip("netns", "add", host.netns)
            made.append(host)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.netns)
            _ip("addr", "add", f"{host.gateway}/24", "dev", host.link)
            _ip("link", "set", host.link, "up")
            _ip("addr", "add", f"{host.address}/24", "dev", peer, netns=host.netns)
            _ip("link", "set", peer, "up", netns=host.netns)
            _ip("link", "set", "lo", "up", netns=host.netns)
            _ip("route", "add", "default", "via", host.gateway, netns=host.netns)
        yield made
    finally:
        for host in made:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
