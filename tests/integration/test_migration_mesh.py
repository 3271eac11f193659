"""Live migration with real processes: scheduler, two sim workers and the frontend on loopback.

The client streams a completion; the test reads the request id from the first SSE chunk and
orders ``POST /admin/migrate {"request_id", "destination"}`` at chosen points. The text, the
finish reason and the usage must equal those of an unmigrated run, and the source worker's log
must show the commit (so the migration really happened)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest

from conftest import ADMIN_KEY, admin_get, blocks_used, expected_text, start_cluster, wait_for

pytestmark = pytest.mark.timeout(120)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
WORKER_ARGS = ["--migration-timeout-s", "1.5"]


@pytest.fixture(scope="module")
def mig_cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("migmesh")
    cluster = start_cluster(logs, instances=2, time_scale=0.5, enable_migration=False,
                            worker_args=WORKER_ARGS)
    cluster.logs = logs / "logs"
    yield cluster
    cluster.stop()


def log_lines(cluster, needle: str) -> list[str]:
    return [line for p in sorted(cluster.logs.glob("worker-*.log"))
            for line in p.read_text().splitlines() if needle in line]


def holder(cluster, rid: str) -> str | None:
    for inst in admin_get(cluster, "/admin/instances")["instances"]:
        if rid in inst["request_ids"] or rid in inst["waiting_ids"]:
            return inst["id"]
    return None


def other(cluster, instance: str) -> str:
    ids = [i["id"] for i in admin_get(cluster, "/admin/instances")["instances"]]
    return next(i for i in ids if i != instance)


async def stream_with_moves(cluster, prompt: str, max_tokens: int, moves: list[int],
                            seed=None, timeout: float = 30.0) -> dict:
    """Stream a completion; when the text reaches each length in ``moves``, migrate the request
    to the instance that does not hold it (waiting until the previous move has landed)."""
    body = {"model": cluster.spec.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    if seed is not None:
        body.update(seed=seed, temperature=0.8, top_p=0.9)
    else:
        body["temperature"] = 0.0  # greedy (the API's default is 1.0)
    out = {"text": "", "replies": [], "finish": None, "usage": None, "id": None}
    pending = list(moves)
    base = log_count(cluster)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        resp = await s.post(cluster.base_url + "/v1/completions", json=body)
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            out["id"] = out["id"] or chunk["id"]
            if chunk.get("choices"):
                out["text"] += chunk["choices"][0]["text"]
                out["finish"] = chunk["choices"][0]["finish_reason"] or out["finish"]
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
            if pending and len(out["text"]) >= pending[0]:
                pending.pop(0)
                prev = out["replies"][-1] if out["replies"] else None
                out["replies"].append(await loop.run_in_executor(
                    None, migrate_away, cluster, out["id"], base + len(out["replies"]), prev))
    return out


def migrate_away(cluster, rid: str, commits: int, prev: dict | None) -> dict:
    """Move ``rid`` to the instance that does not hold it: the first time, where the instance
    table shows it; after a move (once its commit is in the logs), back to that move's source
    (retried while the frontend still attributes the request to its old instance)."""
    if prev is None:
        return admin_migrate(cluster, rid, other(cluster, wait_for(lambda: holder(cluster, rid), 5)))
    wait_for(lambda: log_count(cluster) >= commits, 5)
    for _ in range(100):
        reply = admin_migrate(cluster, rid, prev["source"])
        if reply.get("accepted") or "identical" not in reply.get("reason", ""):
            return reply
        time.sleep(0.02)
    return reply


async def poll(fn, timeout: float = 5.0):
    """``wait_for`` without blocking the event loop (the client streams meanwhile)."""
    return await asyncio.get_running_loop().run_in_executor(None, wait_for, fn, timeout)


def log_count(cluster) -> int:
    return len(log_lines(cluster, "committed on"))


def admin_migrate(cluster, rid: str, destination: str) -> dict:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(cluster.base_url + "/admin/migrate",
                                 json.dumps({"request_id": rid, "destination": destination})
                                 .encode(), {**AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.loads(exc.read())}


def check_exact(out: dict, prompt: str, max_tokens: int, seed=None) -> None:
    assert out["text"] == expected_text(prompt, max_tokens, seed)
    assert out["finish"] == "length"
    n_prompt = len(prompt.encode()) + 1  # byte tokenizer + BOS
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": max_tokens,
                            "total_tokens": n_prompt + max_tokens}


@pytest.mark.parametrize("seed", [None, 11], ids=["greedy", "seeded"])
@pytest.mark.parametrize("at", [1, 40, 112], ids=["after-prefill", "mid-decode", "near-end"])
def test_live_migration_exact_stream(mig_cluster, at, seed):
    before = log_count(mig_cluster)
    prompt = f"migrate me at {at} seed {seed}"
    out = asyncio.run(stream_with_moves(mig_cluster, prompt, 120, [at], seed))
    assert [r["accepted"] for r in out["replies"]] == [True], out["replies"]
    check_exact(out, prompt, 120, seed)
    assert log_count(mig_cluster) == before + 1
    assert wait_for(lambda: sum(blocks_used(mig_cluster).values()) == 0, 5)


def test_migrated_twice_there_and_back(mig_cluster):
    before = log_count(mig_cluster)
    out = asyncio.run(stream_with_moves(mig_cluster, "there and back", 160, [20, 70]))
    (a, b) = out["replies"]
    assert a["accepted"] and b["accepted"] and a["source"] == b["destination"]
    check_exact(out, "there and back", 160)
    assert log_count(mig_cluster) == before + 2


def test_many_concurrent_streams_with_migrations_exact(mig_cluster):
    async def main():
        return await asyncio.gather(*(stream_with_moves(mig_cluster, f"many {i}", 60, [5 + i])
                                      for i in range(8)))

    for i, out in enumerate(asyncio.run(main())):
        assert out["replies"][0].get("accepted"), out["replies"]
        check_exact(out, f"many {i}", 60)
    assert wait_for(lambda: sum(blocks_used(mig_cluster).values()) == 0, 5)


def test_unknown_request_and_bad_destination_are_refused(mig_cluster):
    out = admin_migrate(mig_cluster, "cmpl-nope", "worker-1")
    assert out["status"] == 404


# --- a second cluster: batch size 1 (requests queue), few blocks (refusals) ---------------


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("migsmall")
    cluster = start_cluster(logs, instances=2, time_scale=0.5, enable_migration=False,
                            worker_args=WORKER_ARGS + ["--max-batch-size", "1",
                                                       "--num-blocks", "48"])
    cluster.logs = logs / "logs"
    yield cluster
    cluster.stop()


def test_queued_request_migrates_and_runs_exact(small_cluster):
    c = small_cluster

    async def main():
        tasks = [asyncio.create_task(stream_with_moves(c, f"queued {i}", 60, []))
                 for i in range(3)]
        # queued behind a running request (batch size 1): it will wait ~60 steps. A request
        # seen waiting on an idle instance is about to start, and may be in its prefill (not
        # movable) by the time the order arrives
        waiting = await poll(lambda: [(i["id"], w) for i in admin_get(c, "/admin/instances")
                                      ["instances"] if i["request_ids"]
                                      for w in i["waiting_ids"]])
        assert waiting, "no request queued"
        src, rid = waiting[0]
        reply = await asyncio.get_running_loop().run_in_executor(
            None, admin_migrate, c, rid, other(c, src))
        return reply, await asyncio.gather(*tasks)

    before = log_count(c)
    reply, outs = asyncio.run(main())
    assert reply["accepted"], reply.get("reason")
    for i, out in enumerate(outs):
        check_exact(out, f"queued {i}", 60)
    assert log_count(c) == before + 1
    assert log_lines(c, "0 rounds, 0 stages")  # it moved without KV


def test_destination_without_space_refuses_request_stays(small_cluster):
    c = small_cluster
    long_a, long_b = "a" * 400, "b" * 400  # 26 of 48 blocks each: the other cannot take it

    async def main():
        tb = asyncio.create_task(stream_with_moves(c, long_b, 80, []))
        assert await poll(lambda: max(blocks_used(c).values()) >= 26)  # b runs first
        ta = asyncio.create_task(stream_with_moves(c, long_a, 60, [10]))
        return await asyncio.gather(ta, tb)

    before = len(log_lines(c, "NO_SPACE"))
    outs = asyncio.run(main())
    assert outs[0]["replies"][0]["accepted"]
    check_exact(outs[0], long_a, 60)
    check_exact(outs[1], long_b, 80)
    assert len(log_lines(c, "NO_SPACE")) > before
    assert wait_for(lambda: sum(blocks_used(c).values()) == 0, 5)


# --- a killed destination: the source resumes (last: it kills a worker) --------------------


def test_dead_destination_source_resumes(tmp_path):
    cluster = start_cluster(tmp_path, instances=2, time_scale=0.5, enable_migration=False,
                            worker_args=WORKER_ARGS + ["--last-stage-max-blocks", "0"])
    cluster.logs = tmp_path / "logs"
    try:
        async def main():
            task = asyncio.create_task(stream_with_moves(cluster, "survivor", 150, []))
            (rid,) = await poll(lambda: _streams(cluster))
            src = holder(cluster, rid)
            dst = other(cluster, src)
            cluster.kill(dst, signal.SIGKILL)
            reply = admin_migrate(cluster, rid, dst)  # the scheduler has not noticed yet
            return reply, await task

        reply, out = asyncio.run(main())
        assert reply.get("accepted"), reply
        check_exact(out, "survivor", 150)
        assert log_lines(cluster, "aborted in")
    finally:
        cluster.stop()


def _streams(cluster) -> list[str]:
    ids = []
    for inst in admin_get(cluster, "/admin/instances")["instances"]:
        ids += inst["request_ids"]
    return ids
