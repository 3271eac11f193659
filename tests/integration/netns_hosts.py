"""Hosts made of Linux network namespaces on this machine, joined by a bridge.

Each host is a namespace ``llx<tag>-<name>`` with one veth (``eth0``) on the bridge namespace
``llx<tag>-br``; the test process reaches them through a veth of its own (``.254``). Addresses
are the test's own (a /24 that exists only inside these namespaces); everything is removed on
``close()``. ``available()`` says whether namespaces can be made here (root, iproute2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

SUBNET = "10.231.{}"  # only inside the namespaces this module creates


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"llxprobe{uuid.uuid4().hex[:6]}"
    ok = _ip("netns", "add", name, check=False).returncode == 0
    if ok:
        _ip("netns", "del", name, check=False)
    return ok


class Hosts:
    def __init__(self, names: list[str], net: int = 77):
        self.tag = uuid.uuid4().hex[:4]
        self.prefix = SUBNET.format(net)
        self.bridge_ns = f"llx{self.tag}-br"
        self.addresses: dict[str, str] = {}
        self.namespaces: dict[str, str] = {}
        self._links: list[str] = []
        try:
            self._build(names)
        except Exception:
            self.close()
            raise

    def _build(self, names: list[str]) -> None:
        _ip("netns", "add", self.bridge_ns)
        _ip("link", "add", "br0", "type", "bridge", ns=self.bridge_ns)
        _ip("link", "set", "br0", "up", ns=self.bridge_ns)
        _ip("link", "set", "lo", "up", ns=self.bridge_ns)
        for i, name in enumerate(names, start=1):
            ns = f"llx{self.tag}-{name}"
            _ip("netns", "add", ns)
            self.namespaces[name] = ns
            a, b = f"lx{self.tag}{i}a", f"lx{self.tag}{i}b"
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", ns)
            _ip("link", "set", b, "netns", self.bridge_ns)
            _ip("link", "set", a, "name", "eth0", ns=ns)
            addr = f"{self.prefix}.{i}"
            _ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("link", "set", b, "master", "br0", ns=self.bridge_ns)
            _ip("link", "set", b, "up", ns=self.bridge_ns)
            self.addresses[name] = addr
        # the test process's own leg on the bridge
        a, b = f"lx{self.tag}0a", f"lx{self.tag}0b"
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        _ip("link", "set", b, "netns", self.bridge_ns)
        _ip("addr", "add", f"{self.prefix}.254/24", "dev", a)
        _ip("link", "set", a, "up")
        _ip("link", "set", b, "master", "br0", ns=self.bridge_ns)
        _ip("link", "set", b, "up", ns=self.bridge_ns)
        self._links.append(a)

    def prefix_argv(self, name: str) -> list[str]:
        """Run a command on host ``name``."""
        return ["ip", "netns", "exec", self.namespaces[name]]

    def cut(self, name: str) -> None:
        """Pull the host's cable: its link goes down (the process keeps running)."""
        _ip("link", "set", "eth0", "down", ns=self.namespaces[name])

    def restore(self, name: str) -> None:
        _ip("link", "set", "eth0", "up", ns=self.namespaces[name])

    def close(self) -> None:
        for link in self._links:
            _ip("link", "del", link, check=False)
        for ns in [*self.namespaces.values(), self.bridge_ns]:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()
