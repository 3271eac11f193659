"""A migration commits and the destination dies before its first token reaches the frontend:
the source's RequestMoved notice tells the frontend who owned the request, so it is resumed
(not left hanging on a source that no longer holds it)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from conftest import ADMIN_KEY, admin_get, expected_text, start_cluster, wait_for

pytestmark = pytest.mark.timeout(90)


def two_workers_one_slow(tmp_path, pin: str):
    """worker-0 (time scale 0.5) and worker-1 with ~1 s steps; requests pinned to ``pin``."""
    cluster = start_cluster(tmp_path, instances=1, time_scale=0.5, dispatch_policy=f"pin:{pin}")
    cluster.start_worker(extra=["--time-scale", "40"])
    assert wait_for(lambda: len(admin_get(cluster, "/admin/instances")["instances"]) == 2, 20)
    return cluster


def order_migration(cluster, rid: str, destination: str, tries: int = 3) -> None:
    """Order the migration through the admin endpoint. A 503 (the order's round trip through
    the scheduler timed out) is retried as an operator would, at most ``tries`` times; the
    failure message carries the endpoint's answer."""
    req = urllib.request.Request(
        cluster.base_url + "/admin/migrate",
        json.dumps({"request_id": rid, "destination": destination}).encode(),
        {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
    for attempt in range(1, tries + 1):
        try:
            assert json.loads(urllib.request.urlopen(req, timeout=10).read())["accepted"]
            return
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if attempt > 1 and exc.code == 409 and "already migrating" in body:
                return  # the timed-out order did reach the source
            if exc.code != 503 or attempt == tries:
                raise AssertionError(f"/admin/migrate: {exc.code} {body}") from None
            print(f"/admin/migrate attempt {attempt}: {exc.code} {body}")


async def stream_with_fault(cluster, prompt: str, max_tokens: int, after: int, fault) -> str:
    """Stream a completion; after ``after`` chunks run ``fault(request_id)`` in a thread, then
    read the rest. Returns the whole text."""
    async with aiohttp.ClientSession() as s:
        resp = await s.post(cluster.base_url + "/v1/completions",
                            json={"model": "sim", "prompt": prompt, "max_tokens": max_tokens,
                                  "stream": True})
        text, rid = [], None
        async for line in resp.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                rid = rid or chunk["id"]
                text.append(chunk["choices"][0]["text"])
                if len(text) == after:
                    break
        await asyncio.to_thread(fault, rid)
        async for line in resp.content:
            if line.startswith(b"data: {"):
                text.append(json.loads(line[6:])["choices"][0]["text"])
        return "".join(text)


def test_destination_dies_right_after_commit_request_resumes(tmp_path):
    cluster = two_workers_one_slow(tmp_path, pin="worker-0")
    try:
        def fault(rid):
            order_migration(cluster, rid, "worker-1")

            def on_destination():
                inst = {i["id"]: i for i in admin_get(cluster, "/admin/instances")["instances"]}
                return rid in inst.get("worker-1", {}).get("request_ids", [])

            assert wait_for(on_destination, 10)
            cluster.kill("worker-1", signal.SIGKILL)  # before its first (slow) step ends

        t0 = time.monotonic()
        assert asyncio.run(stream_with_fault(cluster, "owner", 120, 5, fault)) == \
            expected_text("owner", 120)
        assert time.monotonic() - t0 < 30
    finally:
        cluster.stop()


def test_source_dies_after_commit_with_its_last_token_unsent(tmp_path):
    """The source commits a migration during a (slow) step and is killed before that step's
    token leaves it: the destination's tokens wait behind a gap only the dead source could
    fill. When the source is declared dead the frontend stops the request on the destination
    and re-runs it from the tokens it has: the client still gets exactly the right text."""
    cluster = two_workers_one_slow(tmp_path, pin="worker-1")
    try:
        def fault(rid):
            order_migration(cluster, rid, "worker-0")
            # the order is served between two of the source's steps, in its pacing sleep
            # (~1 s): the COMMIT lands within ms, the step's token is still held
            time.sleep(0.15)
            cluster.kill("worker-1", signal.SIGKILL)

        t0 = time.monotonic()
        assert asyncio.run(stream_with_fault(cluster, "lost", 60, 2, fault)) == \
            expected_text("lost", 60)
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
