"""Auto-scaling in the simulator: a burst launches instances (after the startup delay), the
calm after it drains one through migration and stops it."""

from __future__ import annotations

import pytest

from llumnix_zmq.engine.sim import PROFILES, LatencyProfile
from llumnix_zmq.sim import Simulation, SimulationConfig
from llumnix_zmq.sim.instance import Phase
from llumnix_zmq.sim.runner import result_dict
from llumnix_zmq.workload import WorkItem

P = LatencyProfile("test-as", a=0.1, b=0.0, c=10.0, d=0.0, e=0.0,
                   kv_bytes_per_token=1_000_000, num_blocks=200)


@pytest.fixture(autouse=True)
def profile(monkeypatch):
    monkeypatch.setitem(PROFILES, P.name, P)


def test_burst_scales_out_then_drains_via_migration():
    # 16 requests within 0.15 s on one 200-block instance; outputs 400..1000 tokens
    items = [WorkItem(0.01 * i, 64, 400 + 40 * i) for i in range(16)]
    cfg = SimulationConfig(instances=1, profile=P.name, policy="llumnix", requests=len(items),
                           progress=False, autoscale_min=1, autoscale_max=3,
                           startup_delay_s=1.0, scale_cooldown_s=1.0)
    sim = Simulation(cfg, items)
    sim.run()
    launched = sorted(sim.instances.values(), key=lambda i: i.launched_at)
    assert len(launched) >= 2 and sim.counts["scale_out"] == len(launched) - 1
    # a launched instance joins exactly startup_delay after its launch
    first_out = [t for t, n in sim.instance_timeline if n == 2][0]
    assert launched[1].launched_at == pytest.approx(first_out)
    assert sim.counts["scale_in"] >= 1 and sim.counts["stopped"] >= 1
    assert sim.migration_reasons.get("drain", 0) >= 1
    stopped = [i for i in launched if i.phase is Phase.STOPPED]
    assert stopped and all(i.stopped_at is not None and i.info is None for i in stopped)
    # drained instances hold nothing; every request produced all of its tokens
    assert sim.metrics.tokens == [w.output_tokens for w in items]
    for inst in launched:
        inst.engine.allocator_check()
        assert inst.engine.num_free_blocks() == inst.engine.num_blocks
    res = result_dict(sim, items, 1.0)
    m = res["metrics"]
    assert m["instances_launched"] == len(launched)
    assert m["instance_seconds"] == pytest.approx(sum(i.cost_s(sim.end_time) for i in launched))
    assert m["instance_seconds"] < 3 * sim.end_time
    assert 1.0 < m["avg_instances"] < 3.0
