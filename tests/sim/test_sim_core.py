"""The simulator: determinism, a hand-worked scenario, the CLI's JSON."""

from __future__ import annotations

import json

import pytest

from llumnix_zmq.engine.sim import PROFILES, LatencyProfile
from llumnix_zmq.sim import SimulationConfig, run_simulation
from llumnix_zmq.sim.cli import main
from llumnix_zmq.workload import WorkItem

# prefill 1 ms per token, decode 10 ms per step whatever the batch: times are easy sums
ROUND = LatencyProfile("test-round", a=1.0, b=0.0, c=10.0, d=0.0, e=0.0,
                       kv_bytes_per_token=1_000_000, num_blocks=100)


@pytest.fixture
def round_profile(monkeypatch):
    monkeypatch.setitem(PROFILES, ROUND.name, ROUND)
    return ROUND.name


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("wall_seconds", "sim_speed")}


def test_same_seed_same_json():
    cfg = {"instances": 4, "trace": "zipf:128-128", "rate": 20.0, "requests": 300,
           "max_output": 256, "num_blocks": 200, "policy": "llumnix", "priority_fraction": 0.1,
           "seed": 7, "progress": False}
    a = run_simulation(SimulationConfig(**cfg))
    b = run_simulation(SimulationConfig(**cfg))
    assert a["metrics"]["migrations"] > 0 and "by_priority" in a  # migrations and rng exercised
    assert json.dumps(_strip(a), sort_keys=True) == json.dumps(_strip(b), sort_keys=True)
    c = run_simulation(SimulationConfig(**{**cfg, "seed": 8}))
    assert _strip(c)["metrics"] != _strip(a)["metrics"]


def test_two_instances_three_requests_by_hand(round_profile):
    """Round-robin: r0 -> i0, r1 -> i1, r2 -> i0.

    i0: [0, 100 ms) prefill r0 (100 tok)            -> r0 token 0 at 0.100
        [100, 130) r0 decode 10 + r2 prefill 20     -> r0 token 1, r2 token 0 (done) at 0.130
        [130, 140) r0 decode                         -> r0 token 2 (done) at 0.140
    i1: [5, 55) prefill r1 (50 tok)                  -> r1 token 0 at 0.055
        [55, 65) decode                              -> r1 token 1 (done) at 0.065
    """
    items = [WorkItem(0.0, 100, 3), WorkItem(0.005, 50, 2), WorkItem(0.010, 20, 1)]
    cfg = SimulationConfig(instances=2, profile=round_profile, policy="round-robin",
                           requests=3, progress=False)
    res = run_simulation(cfg, items)
    from llumnix_zmq.sim import Simulation

    sim = Simulation(cfg, items)
    sim.run()
    m = sim.metrics.arrays()
    assert m["ttft"].tolist() == pytest.approx([0.100, 0.050, 0.120], abs=1e-12)
    assert m["e2e"].tolist() == pytest.approx([0.140, 0.060, 0.120], abs=1e-12)
    assert m["decode_per_token"][:2].tolist() == pytest.approx([0.020, 0.010], abs=1e-12)
    assert sim.end_time == pytest.approx(0.140)
    assert res["metrics"]["ttft"]["mean"] == pytest.approx((0.1 + 0.05 + 0.12) / 3)
    assert res["metrics"]["instance_seconds"] == pytest.approx(2 * 0.140)
    assert res["metrics"]["migrations"] == 0 and res["metrics"]["preemptions"] == 0
    # the longest 1% of prompts: only r0 (100 tokens)
    long = res["metrics"]["ttft_long_prompts"]
    assert long["n"] == 1 and long["mean"] == pytest.approx(0.100)
    for inst in sim.instances.values():
        inst.engine.allocator_check()
        assert inst.engine.num_free_blocks() == inst.engine.num_blocks


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = main(["--instances", "2", "--trace", "zipf:64-64", "--rate", "4", "--requests", "60",
               "--policy", "infaas++", "--seed", "3", "--no-progress", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    for key in ("ttft", "decode_per_token", "e2e"):
        assert {"mean", "p50", "p80", "p95", "p99"} <= set(m[key])
    for key in ("instance_seconds", "migrations", "preemptions"):
        assert key in m
    assert res["wall_seconds"] > 0 and m["ttft"]["n"] == 60
    assert "TTFT" in capsys.readouterr().out


def test_cli_rejects_bad_autoscale():
    with pytest.raises(SystemExit):
        main(["--autoscale", "3"])


def test_frontend_latency_and_deadline(round_profile):
    """A fixed frontend latency delays every dispatch by the same amount (here every TTFT of the
    hand-worked scenario grows by exactly 5 ms); a deadline stops the clock early."""
    from llumnix_zmq.sim import Simulation

    items = [WorkItem(0.0, 100, 3), WorkItem(0.005, 50, 2), WorkItem(0.010, 20, 1)]
    cfg = SimulationConfig(instances=2, profile=round_profile, policy="round-robin",
                           requests=3, progress=False, frontend_latency_ms=5.0)
    sim = Simulation(cfg, items)
    sim.run()
    assert sim.metrics.arrays()["ttft"].tolist() == pytest.approx([0.105, 0.055, 0.125], abs=1e-12)
    cut = Simulation(SimulationConfig(instances=2, profile=round_profile, policy="round-robin",
                                      requests=3, progress=False, max_sim_seconds=0.1), items)
    cut.run()
    assert cut.truncated and cut.end_time == pytest.approx(0.1) and cut.finished == 1


def test_long_prompt_flags_reach_the_policy():
    """--long-prompt-tokens / --long-prompt-min-freeness: simulator CLI and scheduler service
    build the same PolicyConfig (default 512 / 10; 0 turns the rule off)."""
    from llumnix_zmq.config import SchedulerConfig
    from llumnix_zmq.scheduler.decisions import policy_config
    from llumnix_zmq.sim.cli import build_parser, config_from_args

    assert SimulationConfig().policy_config().long_prompt_tokens == 512
    assert SimulationConfig().policy_config().long_prompt_min_freeness == 10.0
    a = build_parser().parse_args(["--long-prompt-tokens", "0",
                                   "--long-prompt-min-freeness", "3.5"])
    pc = config_from_args(a).policy_config()
    assert (pc.long_prompt_tokens, pc.long_prompt_min_freeness) == (0, 3.5)
    assert policy_config(SchedulerConfig()).long_prompt_tokens == 512
    svc = policy_config(SchedulerConfig(long_prompt_tokens=2048, long_prompt_min_freeness=20.0))
    assert (svc.long_prompt_tokens, svc.long_prompt_min_freeness) == (2048, 20.0)
    assert policy_config(SchedulerConfig(long_prompt_tokens=0)).long_prompt_tokens == 0
