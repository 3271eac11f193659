"""Bounded soak: Poisson load on sim workers while a worker is killed (SIGKILL) and a new one
started every ``--kill-every`` seconds and random live migrations are ordered; every stream is
checked token for token against the sim engine's known output.

    python bench/soak.py --minutes 3 --kill-every 20 --migrate-every 2

Reports requests sent, completed, resumed, failed (must be 0 while an instance lives),
duplicated or corrupted (must be 0), p99 TTFT of requests that overlapped a fault vs the rest,
and KV blocks leaked once the load stops (must be 0). Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np

from llumnix_zmq.engine.sim import pseudo_tokens
from llumnix_zmq.launch.local import ClusterSpec, LocalCluster
from llumnix_zmq.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "soak-admin"
TOK = ByteTokenizer()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin(cluster, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(cluster.base_url + path,
                                 json.dumps(body).encode() if body is not None else None,
                                 {"Authorization": f"Bearer {ADMIN}",
                                  "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def metric(cluster, name: str) -> float:
    text = urllib.request.urlopen(cluster.base_url + "/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def one(session, cluster, i: int, n_out: int, rec: dict) -> None:
    prompt = f"soak {i} " + "x" * (i % 50)
    want = TOK.decode(pseudo_tokens(TOK.encode(prompt), None, 0, n_out))
    rec.update(start=time.monotonic(), ttft=None, status="sent")
    text = []
    try:
        async with session.post(cluster.base_url + "/v1/completions",
                                json={"model": "sim", "prompt": prompt, "max_tokens": n_out,
                                      "stream": True}) as resp:
            if resp.status != 200:
                rec["status"] = f"http {resp.status}"
                return
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                rec.setdefault("id", chunk.get("id"))
                if "error" in chunk:
                    rec["status"] = "error: " + chunk["error"]["message"][:80]
                    return
                if rec["ttft"] is None:
                    rec["ttft"] = time.monotonic() - rec["start"]
                text.append(chunk["choices"][0]["text"])
        got = "".join(text)
        rec["status"] = "ok" if got == want else ("duplicated" if len(got) > len(want)
                                                 else "corrupted")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        rec["status"] = f"error: {type(exc).__name__}"
    finally:
        rec["end"] = time.monotonic()


async def chaos(cluster, stop: asyncio.Event, kill_every: float, migrate_every: float,
                faults: list, rng: random.Random) -> None:
    next_kill = time.monotonic() + kill_every
    while not stop.is_set():
        await asyncio.sleep(migrate_every)
        table = await asyncio.to_thread(admin, cluster, "/admin/instances")
        inst = [i for i in table.get("instances", []) if i["state"] == "active"]
        busy = [i for i in inst if i["request_ids"]]
        if busy and len(inst) > 1:
            src = rng.choice(busy)
            dst = rng.choice([i for i in inst if i["id"] != src["id"]])
            await asyncio.to_thread(admin, cluster, "/admin/migrate",
                                    {"request_id": rng.choice(src["request_ids"]),
                                     "destination": dst["id"]})
        if time.monotonic() >= next_kill and len(inst) > 1:
            victim = rng.choice(inst)["id"]
            t = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim, signal.SIGKILL)
            await asyncio.to_thread(cluster.start_worker)
            faults.append((t, t + 3.0, victim))  # the window in which requests feel it
            next_kill = time.monotonic() + kill_every


async def soak(args) -> dict:
    spec = ClusterSpec(instances=args.instances, port=free_port(), admin_key=ADMIN,
                       time_scale=args.time_scale, log_level=args.log_level,
                       log_dir=str(ROOT / "bench/results/.logs/soak"))
    cluster = LocalCluster(spec)
    cluster.start()
    try:
        if not cluster.wait_ready(60):
            raise SystemExit("cluster did not start")
        rng = random.Random(args.seed)
        np_rng = np.random.default_rng(args.seed)
        stop = asyncio.Event()
        faults: list = []
        records: list[dict] = []
        chaos_task = asyncio.create_task(chaos(cluster, stop, args.kill_every,
                                               args.migrate_every, faults, rng))
        deadline = time.monotonic() + args.minutes * 60
        tasks = []
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            i = 0
            while time.monotonic() < deadline and i < args.max_requests:
                await asyncio.sleep(float(np_rng.exponential(1 / args.rate)))
                rec: dict = {}
                records.append(rec)
                tasks.append(asyncio.create_task(one(session, cluster, i,
                                                     int(np_rng.integers(20, args.max_output)),
                                                     rec)))
                i += 1
            stop.set()
            await chaos_task
            await asyncio.gather(*tasks)
        await asyncio.sleep(2.0)  # let reports settle
        table = admin(cluster, "/admin/instances")
        leaked = sum(i["blocks_used"] for i in table["instances"])
        resumed = metric(cluster, "llumnix_frontend_resumes_total")
        return summarize(records, faults, leaked, resumed, args)
    finally:
        cluster.stop()


def summarize(records, faults, leaked, resumed, args) -> dict:
    def hit(r):
        return any(r["start"] <= f_end and r.get("end", 0) >= f_start
                   for f_start, f_end, _ in faults)

    def p99(xs):
        return float(np.percentile(xs, 99) * 1e3) if xs else None

    status = [r["status"] for r in records]
    ok = [r for r in records if r["status"] == "ok"]
    return {
        "config": vars(args),
        "sent": len(records),
        "completed": len(ok),
        "resumed": int(resumed),
        "failed": sum(1 for s in status if s.startswith(("error", "http"))),
        "duplicated": status.count("duplicated"),
        "corrupted": status.count("corrupted"),
        "worker_kills": len(faults),
        "ttft_p99_ms_during_faults": p99([r["ttft"] for r in ok if hit(r) and r["ttft"]]),
        "ttft_p99_ms_without_faults": p99([r["ttft"] for r in ok if not hit(r) and r["ttft"]]),
        "blocks_leaked": leaked,
        "error_samples": sorted({s for s in status if s != "ok"})[:5],
        "failures": [{"index": i, "status": r["status"], "id": r.get("id"),
                      "start_s": r["start"] - records[0]["start"],
                      "end_s": r.get("end", 0) - records[0]["start"]}
                     for i, r in enumerate(records) if r["status"] != "ok"][:20],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--rate", type=float, default=8.0, help="Poisson req/s")
    p.add_argument("--max-output", type=int, default=200)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--kill-every", type=float, default=20.0)
    p.add_argument("--migrate-every", type=float, default=2.0)
    p.add_argument("--time-scale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--json", default=str(ROOT / "bench/results/soak.json"))
    args = p.parse_args(argv)
    out = asyncio.run(soak(args))
    for k in ("sent", "completed", "resumed", "failed", "duplicated", "corrupted",
              "worker_kills", "ttft_p99_ms_during_faults", "ttft_p99_ms_without_faults",
              "blocks_leaked"):
        print(f"{k:28} {out[k]}")
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0 if out["failed"] == out["duplicated"] == out["corrupted"] == out["blocks_leaked"] == 0 \
        else 1


if __name__ == "__main__":
    sys.exit(main())
