"""Workload package: trace loaders, length samplers, arrivals, build_workload; and the load
generator bench/serving.py against a fake streaming OpenAI server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from llumnix_zmq.workload import (
    PAPER_CAP, ArtifactZipfLengths, WorkItem, ZipfLengths, build_workload, default_traces_dir, detect_format,
    gamma_arrivals, load_trace, parse_length_spec, poisson_arrivals, resolve_trace,
    trace_arrivals,
)

REPO = Path(__file__).resolve().parents[2]
TRACES = default_traces_dir()
needs_traces = pytest.mark.skipif(
    TRACES is None or not (TRACES / "AzureLLMInferenceTrace_conv.csv").is_file(),
    reason="../shared/traces not present")


# ---------------------------------------------------------------- trace loaders (real files)

@needs_traces
def test_azure_first_rows_and_relative_arrivals():
    tr = load_trace(resolve_trace("azure"), "azure")
    assert len(tr) == 19366
    assert tr.prompt_tokens[:3].tolist() == [374, 396, 879]
    assert tr.output_tokens[:3].tolist() == [44, 109, 55]
    # 18:15:46.6805900 -> 18:15:50.9951690 -> 18:15:51.2224670
    assert tr.arrival_s[0] == 0.0
    assert tr.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert tr.arrival_s[2] == pytest.approx(4.541877, abs=1e-9)
    assert np.all(np.diff(tr.arrival_s) >= 0)
    # 18:15:46.68 .. 19:14:08.40: just under one hour
    assert tr.arrival_s[-1] == pytest.approx(3501.722, abs=1e-3)


@needs_traces
def test_mooncake_first_rows_ms_to_seconds():
    tr = load_trace(resolve_trace("mooncake"))
    assert tr.fmt == "mooncake" and len(tr) == 12031
    assert tr.prompt_tokens[:3].tolist() == [6758, 7322, 7236]
    assert tr.output_tokens[:3].tolist() == [500, 490, 794]
    assert tr.arrival_s[:3].tolist() == [0.0, 0.0, 0.0]
    assert tr.arrival_s[-1] == pytest.approx(3536.999)


@needs_traces
def test_sharegpt_first_rows_no_timestamps():
    tr = load_trace(resolve_trace("sharegpt"))
    assert tr.fmt == "sharegpt" and len(tr) == 17400 and tr.arrival_s is None
    assert tr.prompt_tokens[:4].tolist() == [41, 18, 62, 119]
    assert tr.output_tokens[:4].tolist() == [284, 81, 481, 163]


def test_loaders_on_small_files_and_autodetect(tmp_path):
    az = tmp_path / "a.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                  "2024-01-01 23:59:59.5000000,10,2\n2024-01-02 00:00:01.2500000,20,3\n")
    mc = tmp_path / "m.jsonl"
    mc.write_text('{"timestamp": 1000, "input_length": 5, "output_length": 6, "hash_ids": [0]}\n'
                  '{"timestamp": 4500, "input_length": 7, "output_length": 8}\n\n')
    sg = tmp_path / "s.csv"
    sg.write_text("id,from0,from1,prompt_tokens,completion_tokens\nx,human,gpt,3,4\n")
    assert [detect_format(p) for p in (az, mc, sg)] == ["azure", "mooncake", "sharegpt"]
    a = load_trace(az)
    assert a.arrival_s.tolist() == [0.0, 1.75] and a.prompt_tokens.tolist() == [10, 20]
    m = load_trace(str(mc), "mooncake")
    assert m.arrival_s.tolist() == [0.0, 3.5] and m.output_tokens.tolist() == [6, 8]
    assert load_trace(sg).prompt_tokens.tolist() == [3]
    with pytest.raises(ValueError):
        a.prompt_tokens[0] = 1  # cached arrays are read-only
    bad = tmp_path / "b.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError):
        detect_format(bad)
    with pytest.raises(ValueError):
        load_trace(sg, "azure")


def test_traces_dir_env(tmp_path, monkeypatch):
    (tmp_path / "sharegpt_v3_first_pair_lengths.csv").write_text(
        "id,from0,from1,prompt_tokens,completion_tokens\nx,human,gpt,9,0\n")
    monkeypatch.setenv("LLUMNIX_TRACES_DIR", str(tmp_path))
    items = build_workload("sharegpt", 2, rate=math.inf)
    # one row cycled; zero output clipped to 1; rate inf -> all at t=0
    assert items == [WorkItem(0.0, 9, 1, 0), WorkItem(0.0, 9, 1, 0)]


# ---------------------------------------------------------------- lengths

@pytest.mark.parametrize("mean", [128, 256, 512])
def test_zipf_mean_within_5_percent_and_cap(mean):
    z = ZipfLengths(mean)
    assert z.expected_mean() == pytest.approx(mean, rel=1e-6)
    s = z.sample(50_000, np.random.default_rng(0))
    assert abs(s.mean() - mean) / mean < 0.05
    assert s.min() >= 1 and s.max() <= PAPER_CAP
    assert s.max() > 4 * mean  # a real heavy tail, not a narrow bump


def test_zipf_small_cap_and_bad_mean():
    s = ZipfLengths(100, cap=300).sample(20_000, np.random.default_rng(1))
    assert s.max() <= 300 and abs(s.mean() - 100) / 100 < 0.05
    with pytest.raises(ValueError):
        ZipfLengths(5000).exponent  # above (1+6144)/2: no power law has that mean


def test_artifact_zipf_exact_lengths():
    # alpha 2.0 on ranks 1..255; draws 2,1,1,1,3,7,1,2,1,9,3,1 (mean 8/3) scaled by 128/(8/3) = 48
    s = ArtifactZipfLengths(128).sample(12, np.random.default_rng(0))
    assert s.tolist() == [96, 48, 48, 48, 144, 336, 48, 96, 48, 432, 144, 48]
    # a mean without an artifact exponent (or a non-default cap) uses alpha 1.0
    assert ArtifactZipfLengths(4, cap=20).alpha == 1.0
    assert ArtifactZipfLengths(512).alpha == 1.15
    assert ArtifactZipfLengths(4, cap=20).sample(6, np.random.default_rng(1)).tolist() == \
        [3, 9, 2, 9, 2, 3]
    with pytest.raises(ValueError):
        ArtifactZipfLengths(12.5).sample(3, np.random.default_rng(0))


@pytest.mark.parametrize("mean,alpha", [(128, 2.0), (256, 1.5), (512, 1.15)])
def test_artifact_zipf_shape(mean, alpha):
    s = ArtifactZipfLengths(mean).sample(20_000, np.random.default_rng(2))
    assert ArtifactZipfLengths(mean).alpha == alpha
    assert s.max() <= PAPER_CAP and abs(s.mean() - mean) / mean < 0.03  # capping lowers it
    step = s.min()  # rank 1 -> one step; every length is ceil(rank * step_exact)
    assert (s == step).mean() > {128: 0.5, 256: 0.3, 512: 0.15}[mean]


def test_parse_length_spec():
    s = parse_length_spec("artifact-zipf:128-512")
    assert (s.kind, s.prompt_mean, s.output_mean) == ("artifact-zipf", 128, 512)
    assert isinstance(s.samplers()[0], ArtifactZipfLengths)
    s = parse_length_spec("zipf:128-512")
    assert (s.kind, s.prompt_mean, s.output_mean, s.cap) == ("zipf", 128, 512, 6144)
    assert parse_length_spec("zipf:256-256:2048").cap == 2048
    assert parse_length_spec("fixed:64-32").samplers()[1].sample(2, None).tolist() == [32, 32]
    for bad in ("zipf:128", "zipf:a-b", "pareto:1-2", "zipf:0-4"):
        with pytest.raises(ValueError):
            parse_length_spec(bad)


def test_workload_zipf_means():
    items = build_workload("zipf:128-512", 20_000, rate=10.0, seed=3)
    p = np.mean([w.prompt_tokens for w in items])
    o = np.mean([w.output_tokens for w in items])
    assert abs(p - 128) / 128 < 0.05 and abs(o - 512) / 512 < 0.05
    assert max(max(w.prompt_tokens, w.output_tokens) for w in items) <= 6144


# ---------------------------------------------------------------- arrivals

def _cv(t: np.ndarray) -> float:
    g = np.diff(t)
    return float(g.std() / g.mean())


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_cv_and_rate(cv):
    t = gamma_arrivals(20_001, 5.0, cv, np.random.default_rng(7))
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert abs(_cv(t) - cv) / cv < 0.10
    assert abs(20_000 / t[-1] - 5.0) / 5.0 < 0.10


def test_poisson_rate_and_cv():
    t = poisson_arrivals(20_001, 8.0, np.random.default_rng(2))
    assert abs(20_000 / t[-1] - 8.0) / 8.0 < 0.05
    assert abs(_cv(t) - 1.0) < 0.05


def test_trace_arrivals_rate_override_time_scale_and_replay():
    off = np.array([0.0, 1.0, 3.0, 4.0])  # 3 gaps over 4 s: 0.75 req/s
    assert trace_arrivals(off, 4).tolist() == [0.0, 1.0, 3.0, 4.0]
    assert trace_arrivals(off, 4, time_scale=0.5).tolist() == [0.0, 0.5, 1.5, 2.0]
    assert trace_arrivals(off, 4, rate=1.5).tolist() == [0.0, 0.5, 1.5, 2.0]
    assert trace_arrivals(off, 4, rate=1.5, time_scale=2.0).tolist() == [0.0, 1.0, 3.0, 4.0]
    # past the end: replay after one mean gap (4/3 s): period 16/3
    assert trace_arrivals(off, 6).tolist() == pytest.approx([0, 1, 3, 4, 16 / 3, 19 / 3])


@needs_traces
def test_build_workload_azure_trace_arrivals():
    items = build_workload("azure", 3, arrival="trace")
    assert items == [WorkItem(0.0, 374, 44, 0), WorkItem(4.314579, 396, 109, 0),
                     WorkItem(4.541877, 879, 55, 0)]
    fast = build_workload("azure", 3, rate=10.0, arrival="trace")  # 2 gaps in 0.2 s
    assert fast[-1].arrival_s == pytest.approx(0.2)
    assert fast[1].arrival_s == pytest.approx(4.314579 * 0.2 / 4.541877)
    slow = build_workload("azure", 3, arrival="trace", time_scale=2.0)
    assert [w.arrival_s for w in slow] == pytest.approx([0.0, 8.629158, 9.083754])
    capped = build_workload("mooncake", 2, arrival="trace", max_prompt=4096, max_output=100)
    assert [(w.prompt_tokens, w.output_tokens) for w in capped] == [(4096, 100), (4096, 100)]


@needs_traces
def test_build_workload_trace_lengths_generated_arrivals():
    items = build_workload("sharegpt", 1000, rate=4.0, arrival="gamma", cv=2.0, seed=5)
    assert [(w.prompt_tokens, w.output_tokens) for w in items[:2]] == [(41, 284), (18, 81)]
    assert items[0].arrival_s == 0.0 and items[1].arrival_s > 0
    with pytest.raises(ValueError):
        build_workload("sharegpt", 10, arrival="trace")  # no timestamps
    with pytest.raises(ValueError):
        build_workload("sharegpt", 10, arrival="poisson")  # no rate and no timestamps
    own = build_workload("azure", 2000, arrival="poisson", seed=1)  # the trace's own rate
    assert 4.0 < 1999 / own[-1].arrival_s < 7.0


def test_build_workload_zipf_trace_arrival_rejected():
    with pytest.raises(ValueError):
        build_workload("zipf:128-128", 5, rate=1.0, arrival="trace")
    with pytest.raises(ValueError):
        build_workload("zipf:128-128", 5, rate=1.0, arrival="uniform")


# ---------------------------------------------------------------- determinism, priorities

def test_determinism_and_seed_sensitivity():
    kw = dict(rate=26.0, arrival="gamma", cv=4.0, priority_fraction=0.1)
    a = build_workload("zipf:128-128", 500, seed=11, **kw)
    assert a == build_workload("zipf:128-128", 500, seed=11, **kw)
    assert a != build_workload("zipf:128-128", 500, seed=12, **kw)
    # pinned seeded outcome (numpy PCG64 streams are stable across numpy releases)
    assert [(w.prompt_tokens, w.output_tokens, w.priority) for w in a[:3]] == [
        (135, 38, 1), (59, 3, 0), (10, 4, 0)]
    assert [w.arrival_s for w in a[:3]] == pytest.approx([0.0, 2.2785252615389457e-13,
                                                          0.0032270426550886585], rel=1e-9)
    assert [i for i, w in enumerate(a) if w.priority][:5] == [0, 3, 8, 16, 28]
    assert build_workload("zipf:128-512", 4, rate=2.0, seed=0) == [
        WorkItem(0.0, 463, 157, 0), WorkItem(pytest.approx(0.7651374930884102), 2, 3, 0),
        WorkItem(pytest.approx(0.8226532570687647), 16, 83, 0),
        WorkItem(pytest.approx(1.4116428455444374), 1, 15, 0)]
    assert all(type(w.prompt_tokens) is int and type(w.arrival_s) is float for w in a)


def test_priority_fraction_independent_stream():
    base = build_workload("zipf:128-128", 20_000, rate=26.0, seed=4)
    pri = build_workload("zipf:128-128", 20_000, rate=26.0, seed=4, priority_fraction=0.1)
    frac = sum(w.priority for w in pri) / len(pri)
    assert abs(frac - 0.1) < 0.01
    assert {w.priority for w in pri} == {0, 1} and all(w.priority == 0 for w in base)
    strip = [(w.arrival_s, w.prompt_tokens, w.output_tokens) for w in pri]
    assert strip == [(w.arrival_s, w.prompt_tokens, w.output_tokens) for w in base]


def test_rate_and_time_scale_for_generated_arrivals():
    a = build_workload("fixed:8-4", 2001, rate=10.0, seed=0)
    b = build_workload("fixed:8-4", 2001, rate=10.0, seed=0, time_scale=3.0)
    assert [w.arrival_s * 3.0 for w in a] == pytest.approx([w.arrival_s for w in b])
    assert abs(2000 / a[-1].arrival_s - 10.0) < 1.0
    assert all((w.prompt_tokens, w.output_tokens) == (8, 4) for w in a)


# ---------------------------------------------------------------- bench/serving.py

def _load_serving():
    spec = importlib.util.spec_from_file_location("bench_serving", REPO / "bench" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = mod
    spec.loader.exec_module(mod)
    return mod


serving = _load_serving()


def _fake_app(received: list, with_usage: bool, fail_every: int = 0) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        received.append(body)
        if fail_every and len(received) % fail_every == 0:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = body["max_tokens"]
        for i in range(n):
            chunk = {"id": "c", "object": "text_completion",
                     "choices": [{"index": 0, "text": chr(97 + i % 26), "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if with_usage:
            usage = {"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                              "completion_tokens": n, "total_tokens": 0}}
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


async def _serve(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("with_usage", [True, False])
async def test_serving_counts_streamed_tokens(with_usage):
    received: list = []
    runner, url = await _serve(_fake_app(received, with_usage))
    try:
        cfg = serving.BenchConfig(base_url=url, model="fake", workload="zipf:16-24:64",
                                  requests=20, rate=200.0, arrival="gamma", cv=2.0, seed=9,
                                  progress=False, max_seconds=30)
        res = await serving.run_benchmark(cfg)
    finally:
        await runner.cleanup()
    items = build_workload("zipf:16-24:64", 20, 200.0, "gamma", 2.0, seed=9)
    assert res["completed"] == 20 and res["errors"] == 0 and res["not_sent"] == 0
    assert res["output_tokens"] == sum(w.output_tokens for w in items)
    assert res["prompt_tokens"] == sum(w.prompt_tokens for w in items)
    assert sorted(b["max_tokens"] for b in received) == sorted(w.output_tokens for w in items)
    assert sorted(len(b["prompt"]) for b in received) == sorted(w.prompt_tokens for w in items)
    assert all(b["stream"] and b["ignore_eos"] and b["model"] == "fake" for b in received)
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert set(res[key]) == {"mean", "p50", "p99"} and res[key]["p50"] is not None
    assert res["request_throughput"] > 0 and res["output_token_throughput"] > 0
    assert "TTFT" in serving.format_table(res)


async def test_serving_closed_loop_errors_and_words():
    received: list = []
    runner, url = await _serve(_fake_app(received, False, fail_every=5))
    try:
        res = await serving.run_benchmark(dict(
            base_url=url, workload="fixed:6-3", requests=10, concurrency=3, progress=False,
            prompt_mode="words", priority_fraction=1.0, api_key="k"))
    finally:
        await runner.cleanup()
    assert res["completed"] == 8 and res["errors"] == 2 and res["output_tokens"] == 24
    assert "HTTP 500" in res["error_samples"][0]
    assert all(len(b["prompt"].split()) == 6 and b["priority"] == "high" for b in received)


async def test_serving_max_seconds_stops_by_itself():
    release = asyncio.Event()

    async def slow(request):  # one token, then stalls until the test ends
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"text": "x"}]}\n\n')
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", slow)
    runner, url = await _serve(app)
    try:
        res = await serving.run_benchmark(dict(base_url=url, workload="fixed:4-4", requests=50,
                                               rate=20.0, max_seconds=0.5, progress=False))
    finally:
        release.set()
        await runner.cleanup()
    assert res["completed"] == 0 and res["duration_s"] < 5
    assert res["cancelled"] + res["not_sent"] == 50 and res["not_sent"] > 0


def test_serving_refuses_remote_hosts(capsys):
    for ok in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://[::1]:9/v1",
               "http://127.8.9.10/v1"):
        serving.check_loopback(ok, False)
    with pytest.raises(ValueError):
        serving.check_loopback("http://10.0.0.1:8000/v1", False)
    serving.check_loopback("http://example.com/v1", True)
    assert serving.main(["--base-url", "http://192.168.1.5:8000/v1", "--no-progress"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
