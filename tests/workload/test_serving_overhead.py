"""bench/serving_overhead.py: a short run (one seed, 24 requests, sim steps at a tenth of their
modelled time) writes the interface's keys, with the per-request (paired) figures as the
headline and the difference of distributions kept beside them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("serving_overhead",
                                              REPO / "bench" / "serving_overhead.py")
serving_overhead = importlib.util.module_from_spec(spec)
sys.modules["serving_overhead"] = serving_overhead
spec.loader.exec_module(serving_overhead)

pytestmark = pytest.mark.timeout(180)


def test_a_short_run_writes_the_paired_headline_and_the_distributions(tmp_path):
    out = tmp_path / "serving_overhead.json"
    rc = serving_overhead.main(["--requests", "24", "--seeds", "1", "--rate", "40",
                                "--time-scale", "0.1", "--throughput-output", "16",
                                "--concurrency", "4", "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0
    pair, seed = res["paired"], res["per_seed"][0]
    assert pair["n"] == 24 and seed["wire"]["errors"] == 0
    for q in ("p50", "p99", "mean"):
        assert res[f"added_ttft_ms_{q}"] == pair[f"added_ttft_ms_{q}"] == seed[f"added_ttft_ms_{q}"]
        dist = res["distribution_difference"][f"added_ttft_ms_{q}"]
        assert dist == seed[f"distribution_added_ttft_ms_{q}"]
    assert res["distribution_difference"]["added_ttft_ms_p50"] == pytest.approx(
        res["mesh_ttft_ms"]["p50"] - res["inprocess_ttft_ms"]["p50"])
    assert 0 < pair["added_ttft_ms_p50"] <= pair["added_ttft_ms_p99"]
    stages = pair["stages_ms_p50"]
    assert list(stages) == [name for name, _, _ in serving_overhead.PAIRED_STAGES]
    assert all(v > 0 for k, v in stages.items() if "kernel stamp" not in k)
    assert res["frontend_tokens_per_s"] > 0
    assert res["throughput_run"]["errors"] == 0
