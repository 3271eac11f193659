"""Step 4 end to end (real processes, sim engines): the pairing loop evens out a skewed load by
live migration; high-priority requests get a better TTFT; auto-scaling adds an instance under a
burst and drains one afterwards, every client stream exact."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from conftest import admin_get, blocks_used, expected_text, start_cluster, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from serving import BenchConfig, run_benchmark  # noqa: E402

pytestmark = pytest.mark.timeout(150)


async def _streams(base_url: str, prompts: list[tuple[str, int]]) -> list[bool]:
    async def one(c, prompt, n):
        stream = await c.completions.create(model="sim", prompt=prompt, max_tokens=n,
                                            stream=True)
        text = "".join([ch.choices[0].text async for ch in stream if ch.choices])
        return text == expected_text(prompt, n)

    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0,
                                  timeout=120) as c:
        return await asyncio.gather(*(one(c, p, n) for p, n in prompts))


def test_pairing_loop_evens_out_a_skewed_load(tmp_path):
    cluster = start_cluster(
        tmp_path, instances=2, time_scale=1.0, dispatch_policy="pin:worker-0",
        worker_args=["--num-blocks", "400"],
        scheduler_args=["--migrate-out-threshold", "20", "--migrate-in-threshold", "40",
                        "--max-migrations-per-pair", "2"])
    try:
        seen: list[dict] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                seen.append(blocks_used(cluster))
                time.sleep(0.2)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        results = asyncio.run(_streams(cluster.base_url, [(f"skew{i}", 400) for i in range(16)]))
        done.set()
        t.join()
        assert all(results)
        # every request was first dispatched to worker-0; migration moved load to worker-1
        even = [b for b in seen if b.get("worker-1", 0) > 0
                and min(b.values()) >= 0.5 * max(b.values())]
        assert even, seen[-10:]
        first_even = seen.index(even[0]) * 0.2
        assert first_even < 15, f"took {first_even:.1f}s to even out"
        assert wait_for(lambda: sum(blocks_used(cluster).values()) == 0, 5)
    finally:
        cluster.stop()


def test_high_priority_ttft_beats_normal(tmp_path):
    cluster = start_cluster(tmp_path, instances=2, time_scale=1.0,
                            worker_args=["--num-blocks", "300", "--max-batch-size", "24"])
    try:
        cfg = BenchConfig(base_url=cluster.base_url + "/v1", model="sim",
                          workload="fixed:64-96", requests=160, rate=40.0,
                          priority_fraction=0.1, seed=3, progress=False, max_seconds=120)
        res = asyncio.run(run_benchmark(cfg))
        assert res["errors"] == 0 and res["completed"] == 160
        high, normal = res["by_priority"]["high"], res["by_priority"]["normal"]
        assert high["completed"] >= 8
        assert high["ttft_ms"]["p50"] < normal["ttft_ms"]["p50"]
        assert high["ttft_ms"]["mean"] < normal["ttft_ms"]["mean"]
    finally:
        cluster.stop()


def test_autoscale_out_under_burst_then_drain_in(tmp_path):
    cluster = start_cluster(
        tmp_path, instances=1, time_scale=1.0, autoscale=(1, 2),
        worker_args=["--num-blocks", "300"],
        scheduler_args=["--scale-out-threshold", "30", "--scale-in-threshold", "100",
                        "--scale-cooldown-s", "1", "--migrate-out-threshold", "20",
                        "--migrate-in-threshold", "40", "--max-migrations-per-pair", "2"])
    try:
        counts: list[int] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                counts.append(sum(1 for i in admin_get(cluster, "/admin/instances")["instances"]
                                  if i["state"] == "active"))  # a draining one may linger
                time.sleep(0.2)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        results = asyncio.run(_streams(cluster.base_url,
                                       [(f"burst{i}", 300) for i in range(24)]))
        assert all(results) and len(results) == 24  # nothing lost, nothing duplicated
        assert max(counts) == 2, counts  # scaled out under the burst, never past the max
        # ... and back in once idle: one instance drains (migrating anything left) and stops
        assert wait_for(lambda: len(admin_get(cluster, "/admin/instances")["instances"]) == 1,
                        30)
        done.set()
        t.join()
        assert wait_for(lambda: sum(blocks_used(cluster).values()) == 0, 5)
        out = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) \
            .completions.create(model="sim", prompt="after", max_tokens=5)
        assert out.choices[0].text == expected_text("after", 5)
    finally:
        cluster.stop()


async def _high_arrives_when_full(base_url: str) -> list[str]:
    """Two NORMAL streams fill the instance's blocks; once both stream, a HIGH request whose
    prompt does not fit the free blocks arrives. Returns the order the three finished in."""
    order: list[str] = []
    started = {"n1": asyncio.Event(), "n2": asyncio.Event()}

    async def one(c, name, prompt, n, priority):
        stream = await c.completions.create(model="sim", prompt=prompt, max_tokens=n,
                                            stream=True, extra_body={"priority": priority})
        text = ""
        async for ch in stream:
            if ch.choices:
                text += ch.choices[0].text
                if name in started:
                    started[name].set()
        assert text == expected_text(prompt, n), name
        order.append(name)

    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0,
                                  timeout=60) as c:
        # 271 prompt tokens (17 blocks of 16) each, growing to 20 blocks: 34-40 of 40 in use
        normal = [asyncio.create_task(one(c, f"n{i}", f"{i}" * 270, 40, "normal"))
                  for i in (1, 2)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 30)
        high = one(c, "h", "h" * 100, 4, "high")  # 101 tokens: 7 blocks, at most 6 free
        await asyncio.gather(high, *normal)
    return order


@pytest.mark.parametrize("preemption", [True, False])
def test_high_priority_preempts_normal_when_blocks_run_out(tmp_path, preemption):
    flag = "--priority-preemption" if preemption else "--no-priority-preemption"
    cluster = start_cluster(tmp_path, instances=1, time_scale=1.0,
                            worker_args=["--num-blocks", "40", flag])
    try:
        order = asyncio.run(_high_arrives_when_full(cluster.base_url))
        if preemption:  # admitted at once (a NORMAL recomputes later): done long before them
            assert order[0] == "h", order
        else:  # waits for a NORMAL request to finish and free its blocks
            assert order.index("h") >= 1, order
        assert wait_for(lambda: sum(blocks_used(cluster).values()) == 0, 5)
    finally:
        cluster.stop()
