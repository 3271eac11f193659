"""Load generator for any OpenAI-compatible endpoint (streaming ``/v1/completions``).

    python bench/serving.py --base-url http://127.0.0.1:8000/v1 --model tiny \
        --workload zipf:128-128 --requests 200 --rate 8 --arrival gamma --cv 2 --json out.json

Open loop (Poisson / Gamma / trace arrivals) or closed loop (``--concurrency C``). Lengths come
from ``llumnix_zmq.workload``; every request asks for exactly its output length (``max_tokens``,
``ignore_eos``). Tokens are counted from the SSE stream: the server's ``usage.completion_tokens``
when it sends one (we ask with ``stream_options.include_usage``), else one per non-empty chunk.
Bounded by ``--requests`` and ``--max-seconds``; refuses non-loopback hosts without
``--allow-remote``. In-process use: ``await run_benchmark(BenchConfig(...))`` returns the result dict.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import aiohttp
import numpy as np

from llumnix_zmq.workload import WorkItem, build_workload, workload_summary

CANCELLED = "cancelled at --max-seconds"
WORDS = ("the of and to in is it that for on with as was at by be this from or have an are "
         "not but one all we can you which they will there their what so if about more up "
         "out them time some would other into then these two has see way could people").split()


@dataclass
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "tiny"
    api_key: str | None = None
    workload: str = "zipf:128-128"  # length spec, trace path, or azure|mooncake|sharegpt
    requests: int = 100
    rate: float | None = None  # req/s; None = trace's own rate, inf = all at once
    arrival: str = "poisson"  # poisson | gamma | trace
    cv: float = 1.0
    time_scale: float = 1.0
    priority_fraction: float = 0.0
    seed: int = 0
    trace_format: str | None = None
    max_prompt: int | None = None
    max_output: int | None = None
    concurrency: int | None = None  # closed loop with C clients (arrival times ignored)
    max_seconds: float = 600.0
    request_timeout: float = 300.0
    prompt_mode: str = "bytes"  # bytes: one char per token; words: one common word per token
    ignore_eos: bool = True
    allow_remote: bool = False
    progress: bool = True
    per_request: bool = False
    items: list[WorkItem] | None = field(default=None, repr=False)  # overrides the workload


@dataclass
class RequestResult:
    index: int
    prompt_tokens: int
    output_tokens: int  # requested
    priority: int
    start: float = 0.0
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0  # streamed (usage-reported when the server sends usage)
    chunks: int = 0
    itl: list[float] = field(default_factory=list)
    error: str | None = None


def check_loopback(base_url: str, allow_remote: bool) -> None:
    """Raise ValueError unless the URL's host is loopback (or remote targets are allowed)."""
    host = urlparse(base_url).hostname
    if host is None:
        raise ValueError(f"base URL {base_url!r} has no host")
    if allow_remote or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"refusing non-loopback host {host!r}; pass --allow-remote to benchmark it")


def make_prompt(n: int, mode: str, rng: np.random.Generator) -> str:
    """A prompt of ``n`` tokens: ``n`` random letters (byte tokenizer) or ``n`` common words."""
    if mode == "bytes":
        return rng.integers(97, 123, size=n, dtype=np.uint8).tobytes().decode("ascii")
    if mode == "words":
        return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=n))
    raise ValueError(f"unknown prompt mode {mode!r} (bytes | words)")


def _payload(cfg: BenchConfig, item: WorkItem, prompt: str) -> dict:
    body = {"model": cfg.model, "prompt": prompt, "max_tokens": item.output_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.0}
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if item.priority:  # llumnix-zmq's extension field ("normal" | "high")
        body["priority"] = "high"
    return body


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    return c.get("text") or (c.get("delta") or {}).get("content") or ""


async def _consume_sse(resp: aiohttp.ClientResponse, res: RequestResult) -> None:
    usage_tokens = None
    last = res.start
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"stream error: {chunk['error']}")
        if chunk.get("usage"):
            usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
        if not _chunk_text(chunk):
            continue
        now = time.perf_counter()
        if res.ttft is None:
            res.ttft = now - res.start
        else:
            res.itl.append(now - last)
        last = now
        res.chunks += 1
    res.tokens = usage_tokens if usage_tokens is not None else res.chunks


async def _one_request(session: aiohttp.ClientSession, cfg: BenchConfig, url: str,
                       res: RequestResult, item: WorkItem) -> RequestResult:
    prompt = make_prompt(item.prompt_tokens, cfg.prompt_mode,
                         np.random.default_rng([cfg.seed, res.index]))
    res.start = time.perf_counter()
    try:
        async with session.post(url, json=_payload(cfg, item, prompt)) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return res
            await _consume_sse(resp, res)
        res.e2e = time.perf_counter() - res.start
    except asyncio.CancelledError:
        res.error = CANCELLED
        raise
    except Exception as exc:  # per-request failure is data, counted in "errors"
        res.error = f"{type(exc).__name__}: {exc}"[:300]
    return res


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="req", file=sys.stderr)
            except ImportError:
                pass

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (self.done == self.total or self.done % max(1, self.total // 10) == 0):
            print(f"  {self.done}/{self.total} requests", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _open_loop(cfg, items, results, fire) -> None:
    t0 = time.perf_counter()
    tasks = []
    for item, res in zip(items, results):
        delay = t0 + item.arrival_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(fire(res, item)))
    await asyncio.gather(*tasks)


async def _closed_loop(cfg, items, results, fire) -> None:
    queue = list(zip(items, results))
    queue.reverse()

    async def client() -> None:
        while queue:
            item_res = queue.pop()
            await fire(item_res[1], item_res[0])

    await asyncio.gather(*(client() for _ in range(max(1, cfg.concurrency))))


def _workload(cfg: BenchConfig) -> list[WorkItem]:
    if cfg.items is not None:
        return list(cfg.items)[: cfg.requests]
    rate = cfg.rate
    if cfg.concurrency and rate is None and cfg.arrival != "trace":
        rate = math.inf  # closed loop ignores arrivals
    return build_workload(cfg.workload, cfg.requests, rate, cfg.arrival, cfg.cv, cfg.time_scale,
                          cfg.priority_fraction, cfg.seed, cfg.trace_format, cfg.max_prompt,
                          cfg.max_output)


async def run_benchmark(config: BenchConfig | dict) -> dict:
    """Run one benchmark and return the result dict (see :func:`summarize`)."""
    cfg = BenchConfig(**config) if isinstance(config, dict) else config
    check_loopback(cfg.base_url, cfg.allow_remote)
    items = _workload(cfg)
    results = [RequestResult(i, w.prompt_tokens, w.output_tokens, w.priority)
               for i, w in enumerate(items)]
    url = cfg.base_url.rstrip("/") + "/completions"
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    progress = _Progress(len(items), cfg.progress)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as s:
        async def fire(res: RequestResult, item: WorkItem) -> None:
            await _one_request(s, cfg, url, res, item)
            progress.step()

        loop = _closed_loop if cfg.concurrency else _open_loop
        try:
            await asyncio.wait_for(loop(cfg, items, results, fire), cfg.max_seconds)
        except asyncio.TimeoutError:
            pass
    duration = time.perf_counter() - t0
    progress.close()
    return summarize(cfg, items, results, duration)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    a = np.asarray(values) * 1000.0
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99))}


def summarize(cfg: BenchConfig, items: list[WorkItem], results: list[RequestResult],
              duration: float) -> dict:
    ok = [r for r in results if r.error is None and r.e2e is not None]
    cancelled = [r for r in results if r.error == CANCELLED]
    errors = [r for r in results if r.error is not None and r.error != CANCELLED]
    tokens = sum(r.tokens for r in ok)
    tpot = [(r.e2e - r.ttft) / (r.tokens - 1) for r in ok if r.ttft is not None and r.tokens > 1]
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("items", "api_key")}
    out = {
        "config": conf,
        "workload": workload_summary(items),
        "duration_s": duration,
        "requests": len(items),
        "completed": len(ok),
        "errors": len(errors),
        "cancelled": len(cancelled),
        "not_sent": len(results) - len(ok) - len(errors) - len(cancelled),
        "error_samples": sorted({r.error for r in errors})[:5],
        "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "output_tokens": tokens,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_token_throughput": tokens / duration if duration > 0 else 0.0,
        "ttft_ms": _stats([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": _stats([x for r in ok for x in r.itl]),
        "tpot_ms": _stats(tpot),
        "e2e_ms": _stats([r.e2e for r in ok]),
    }
    if any(r.priority for r in results):
        out["by_priority"] = {
            name: {"completed": len(group),
                   "ttft_ms": _stats([r.ttft for r in group if r.ttft is not None]),
                   "e2e_ms": _stats([r.e2e for r in group])}
            for name, group in (("normal", [r for r in ok if not r.priority]),
                                ("high", [r for r in ok if r.priority]))}
    if cfg.per_request:
        out["per_request"] = [{k: v for k, v in asdict(r).items() if k != "itl"} for r in results]
    return out


def format_table(res: dict) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    lines = [
        "=========== serving benchmark ===========",
        f"{'completed / errors / unfinished':<32}{res['completed']} / {res['errors']} / "
        f"{res['cancelled'] + res['not_sent']} of {res['requests']}",
        f"{'duration (s)':<32}{res['duration_s']:.2f}",
        f"{'request throughput (req/s)':<32}{res['request_throughput']:.2f}",
        f"{'streamed tokens/s':<32}{res['output_token_throughput']:.1f}",
        f"{'prompt / output tokens':<32}{res['prompt_tokens']} / {res['output_tokens']}",
        f"{'latency (ms)':<16}{'mean':>10}{'p50':>10}{'p99':>10}",
    ]
    for name in ("ttft", "itl", "tpot", "e2e"):
        s = res[f"{name}_ms"]
        lines.append(f"{name.upper():<16}{f(s['mean']):>10}{f(s['p50']):>10}{f(s['p99']):>10}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--base-url", default="http://127.0.0.1:8000/v1")
    a("--model", default="tiny")
    a("--api-key", default=None)
    a("--workload", "--trace", dest="workload", default="zipf:128-128",
      help="zipf:IN-OUT[:CAP], fixed:IN-OUT, a trace file, or azure|mooncake|sharegpt")
    a("--trace-format", choices=["azure", "mooncake", "sharegpt"], default=None)
    a("--requests", "-n", type=int, default=100)
    a("--rate", type=float, default=None, help="req/s (inf = all at once)")
    a("--arrival", choices=["poisson", "gamma", "trace"], default="poisson")
    a("--cv", type=float, default=1.0, help="Gamma coefficient of variation")
    a("--time-scale", type=float, default=1.0, help="multiply arrival offsets")
    a("--priority-fraction", type=float, default=0.0)
    a("--seed", type=int, default=0)
    a("--max-prompt", type=int, default=None)
    a("--max-output", type=int, default=None)
    a("--concurrency", type=int, default=None, help="closed loop with C clients")
    a("--max-seconds", type=float, default=600.0)
    a("--request-timeout", type=float, default=300.0)
    a("--prompt-mode", choices=["bytes", "words"], default="bytes")
    a("--no-ignore-eos", dest="ignore_eos", action="store_false")
    a("--allow-remote", action="store_true")
    a("--no-progress", dest="progress", action="store_false")
    a("--per-request", action="store_true", help="include every request in the JSON")
    a("--json", default=None, help="write results here")
    ns = vars(p.parse_args(argv))
    json_path = ns.pop("json")
    return BenchConfig(**ns), json_path


def main(argv: list[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    try:
        check_loopback(cfg.base_url, cfg.allow_remote)
        res = asyncio.run(run_benchmark(cfg))
    except (ValueError, FileNotFoundError) as exc:
        print(f"serving.py: {exc}", file=sys.stderr)
        return 2
    print(format_table(res))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if res["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
