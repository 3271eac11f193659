"""A migration commits and the destination dies before its first token reaches the frontend:
the source's RequestMoved notice tells the frontend who owned the request, so it is resumed
(not left hanging on a source that no longer holds it)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import aiohttp
import pytest

from conftest import ADMIN_KEY, admin_get, expected_text, start_cluster, wait_for

pytestmark = pytest.mark.timeout(90)


def test_destination_dies_right_after_commit_request_resumes(tmp_path):
    cluster = start_cluster(tmp_path, instances=1, time_scale=0.5,
                            dispatch_policy="pin:worker-0")
    try:
        cluster.start_worker(extra=["--time-scale", "40"])  # worker-1: a very slow first step
        assert wait_for(lambda: len(admin_get(cluster, "/admin/instances")["instances"]) == 2,
                        20)

        async def main():
            async with aiohttp.ClientSession() as s:
                resp = await s.post(cluster.base_url + "/v1/completions",
                                    json={"model": "sim", "prompt": "owner", "max_tokens": 120,
                                          "stream": True})
                text, rid = [], None
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        rid = rid or chunk["id"]
                        text.append(chunk["choices"][0]["text"])
                        if len(text) == 5:
                            break
                req = urllib.request.Request(
                    cluster.base_url + "/admin/migrate",
                    json.dumps({"request_id": rid, "destination": "worker-1"}).encode(),
                    {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
                assert json.loads(urllib.request.urlopen(req).read())["accepted"]

                def on_destination():
                    inst = {i["id"]: i for i in admin_get(cluster, "/admin/instances")
                            ["instances"]}
                    return rid in inst.get("worker-1", {}).get("request_ids", [])

                assert await asyncio.to_thread(wait_for, on_destination, 10)
                cluster.kill("worker-1", signal.SIGKILL)  # before its first (slow) step ends
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        text.append(json.loads(line[6:])["choices"][0]["text"])
                return "".join(text)

        t0 = time.monotonic()
        assert asyncio.run(main()) == expected_text("owner", 120)
        assert time.monotonic() - t0 < 30
    finally:
        cluster.stop()


def test_source_dies_after_commit_with_its_last_token_unsent(tmp_path):
    """The source commits a migration during a (slow) step and is killed before that step's
    token leaves it: the destination's tokens wait behind a gap only the dead source could
    fill. When the source is declared dead the frontend stops the request on the destination
    and re-runs it from the tokens it has: the client still gets exactly the right text."""
    cluster = start_cluster(tmp_path, instances=1, time_scale=0.5,
                            dispatch_policy="pin:worker-1")
    try:
        cluster.start_worker(extra=["--time-scale", "40"])  # worker-1: ~1 s per step
        assert wait_for(lambda: len(admin_get(cluster, "/admin/instances")["instances"]) == 2,
                        20)

        async def main():
            async with aiohttp.ClientSession() as s:
                resp = await s.post(cluster.base_url + "/v1/completions",
                                    json={"model": "sim", "prompt": "lost", "max_tokens": 60,
                                          "stream": True})
                text, rid = [], None
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        rid = rid or chunk["id"]
                        text.append(chunk["choices"][0]["text"])
                        if len(text) == 2:
                            break

                def order_and_kill():
                    req = urllib.request.Request(
                        cluster.base_url + "/admin/migrate",
                        json.dumps({"request_id": rid, "destination": "worker-0"}).encode(),
                        {"Authorization": f"Bearer {ADMIN_KEY}",
                         "Content-Type": "application/json"})
                    assert json.loads(urllib.request.urlopen(req).read())["accepted"]
                    # the order is served between two of the source's steps, in its pacing
                    # sleep (~1 s): the COMMIT lands within ms, the step's token is still held
                    time.sleep(0.15)
                    cluster.kill("worker-1", signal.SIGKILL)

                await asyncio.to_thread(order_and_kill)
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        text.append(json.loads(line[6:])["choices"][0]["text"])
                return "".join(text)

        t0 = time.monotonic()
        assert asyncio.run(main()) == expected_text("lost", 60)
        assert time.monotonic() - t0 < 30
        lines = log_lines(cluster)
        assert any("were lost with worker-1" in line for line in lines), lines[-20:]
        assert wait_for(lambda: sum(i["blocks_used"] for i in
                                    admin_get(cluster, "/admin/instances")["instances"]) == 0, 10)
    finally:
        cluster.stop()


def log_lines(cluster) -> list[str]:
    import pathlib

    return pathlib.Path(cluster.spec.log_dir, "frontend.log").read_text().splitlines()
