"""Services on four "hosts" (network namespaces joined by a bridge): scheduler, frontend and two
workers, each on its own address. One host's cable is pulled mid-stream: its requests resume
on the other host and every client stream completes exactly. Skipped where namespaces cannot
be made (not root, no iproute2)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import aiohttp
import openai
import pytest

import netns_hosts
from conftest import ADMIN_KEY, expected_text, wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not netns_hosts.available(),
                                 reason="network namespaces cannot be made here")]


class MultiHost:
    def __init__(self, tmp_path):
        self.hosts = netns_hosts.Hosts(["sched", "fe", "w0", "w1"])
        a = self.hosts.addresses
        self.scheduler = f"tcp://{a['sched']}:5555"
        self.base_url = f"http://{a['fe']}:8000"
        self.logs = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, host: str, role: str, *args: str) -> None:
        argv = [*self.hosts.prefix_argv(host), sys.executable, "-m", "llumnix_zmq.cli", role,
                *args]
        log = open(self.logs / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def up(self) -> None:
        a = self.hosts.addresses
        self.start("scheduler", "sched", "scheduler", "--bind", self.scheduler)
        for w in ("w0", "w1"):
            self.start(w, w, "worker", "--scheduler", self.scheduler, "--instance-id", w,
                       "--bind", f"tcp://{a[w]}:5600", "--time-scale", "0.5")
        self.start("frontend", "fe", "frontend", "--scheduler", self.scheduler,
                   "--host", a["fe"], "--port", "8000", "--bind-tokens",
                   f"tcp://{a['fe']}:5700", "--expect-instances", "2", "--admin-key",
                   ADMIN_KEY)

    def health(self):
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=1) as r:
                return json.loads(r.read())["status"] == "ok"
        except Exception:
            return False

    def instances(self) -> dict:
        req = urllib.request.Request(self.base_url + "/admin/instances",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        with urllib.request.urlopen(req, timeout=2) as r:
            return {i["id"]: i for i in json.loads(r.read())["instances"]}

    def close(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.hosts.close()


@pytest.fixture
def multihost(tmp_path):
    mh = MultiHost(tmp_path)
    try:
        mh.up()
        if not wait_for(mh.health, 40):
            logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.log"))
            raise AssertionError(f"multi-host cluster not ready\n{logs}")
        yield mh
    finally:
        mh.close()


def test_each_service_on_its_own_host_serves_exactly(multihost):
    c = openai.OpenAI(base_url=multihost.base_url + "/v1", api_key="x", max_retries=0)
    for i in range(4):
        out = c.completions.create(model="sim", prompt=f"host{i}", max_tokens=10)
        assert out.choices[0].text == expected_text(f"host{i}", 10)
    inst = multihost.instances()
    assert {k: v["address"] for k, v in inst.items()} == {
        "w0": f"tcp://{multihost.hosts.addresses['w0']}:5600",
        "w1": f"tcp://{multihost.hosts.addresses['w1']}:5600"}


def test_cut_host_mid_stream_resumes_elsewhere(multihost):
    async def one(c, i):
        stream = await c.completions.create(model="sim", prompt=f"cut{i}", max_tokens=150,
                                            stream=True)
        text = "".join([ch.choices[0].text async for ch in stream if ch.choices])
        return text == expected_text(f"cut{i}", 150)

    async def main():
        async with openai.AsyncOpenAI(base_url=multihost.base_url + "/v1", api_key="x",
                                      max_retries=0, timeout=60) as c:
            tasks = [asyncio.create_task(one(c, i)) for i in range(16)]
            await asyncio.sleep(1.0)
            running = {k: v["running"] for k, v in multihost.instances().items()}
            assert running["w0"] > 0 and running["w1"] > 0, running
            multihost.hosts.cut("w0")
            return await asyncio.gather(*tasks)

    t0 = time.monotonic()
    results = asyncio.run(main())
    assert all(results) and len(results) == 16
    assert time.monotonic() - t0 < 60
    assert list(multihost.instances()) == ["w1"]


def test_migration_across_hosts_is_exact(multihost):
    """A running request is live-migrated from the host w0 to the host w1 (its KV blocks cross
    the bridge as ZeroMQ frames) and the client stream stays exact."""
    async def main():
        async with aiohttp.ClientSession() as s:
            resp = await s.post(multihost.base_url + "/v1/completions",
                                json={"model": "sim", "prompt": "cross-host",
                                      "max_tokens": 150, "stream": True})
            text, rid = [], None
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    rid = rid or chunk["id"]
                    text.append(chunk["choices"][0]["text"])
                    if len(text) == 20:
                        break
            source = next(k for k, v in multihost.instances().items() if rid in v["request_ids"])
            dest = "w1" if source == "w0" else "w0"
            req = urllib.request.Request(
                multihost.base_url + "/admin/migrate",
                json.dumps({"request_id": rid, "destination": dest}).encode(),
                {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
            reply = json.loads(urllib.request.urlopen(req, timeout=5).read())
            assert reply["accepted"], reply
            moved = await asyncio.to_thread(
                wait_for, lambda: rid in multihost.instances()[dest]["request_ids"], 10)
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    text.append(json.loads(line[6:])["choices"][0]["text"])
            return "".join(text), moved

    text, moved = asyncio.run(main())
    assert moved
    assert text == expected_text("cross-host", 150)
