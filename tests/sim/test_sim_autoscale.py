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
    # 16 requests within 0.15 s on one 200-block instance; outputs 400..1000 tokens. Scale-in
    # band top 30: with the default 60, the cluster without the victim only passes it once the
    # victim is (nearly) empty, and nothing is left to drain by migration
    items = [WorkItem(0.01 * i, 64, 400 + 40 * i) for i in range(16)]
    cfg = SimulationConfig(instances=1, profile=P.name, policy="llumnix", requests=len(items),
                           progress=False, autoscale_min=1, autoscale_max=3,
                           startup_delay_s=1.0, scale_cooldown_s=1.0, scale_in_threshold=30.0)
    sim = Simulation(cfg, items)
    sim.run()
    launched = sorted(sim.instances.values(), key=lambda i: i.launched_at)
    assert len(launched) >= 2 and sim.counts["scale_out"] == len(launched) - 1
    # a launched instance joins exactly startup_delay after its launch
    first_out = next(t for t, n in sim.instance_timeline if n == 2)
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


def test_rising_load_cancels_a_drain_instead_of_launching():
    # INFaaS++ (no migration): i0 drains in place, slowly. A burst at t=3 s pulls the cluster's
    # freeness under 10 while i0 still holds its request: it is reactivated ("undrain", no
    # startup delay) rather than a new instance launched.
    items = [WorkItem(0.0, 64, 1000), WorkItem(0.001, 64, 1000)] + [
        WorkItem(3.0 + 0.001 * i, 600, 200) for i in range(4)]
    cfg = SimulationConfig(instances=2, profile=P.name, policy="infaas++", requests=len(items),
                           progress=False, autoscale_min=1, autoscale_max=2, startup_delay_s=1.0,
                           scale_cooldown_s=1.0, scale_in_threshold=30.0)
    sim = Simulation(cfg, items)
    log = []
    decide = sim.scaler.decide

    def spy(infos, now, num_pending=0):
        d = decide(infos, now, num_pending=num_pending)
        if d.action != "none":
            log.append((round(now, 6), d.action, d.instance_id, d.reason))
            assert d.action != "undrain" or d.average_freeness < 10.0
        return d

    sim.scaler.decide = spy
    sim.run()
    assert log == [(1.1, "in", "i0", "freeness-high"), (3.1, "undrain", "i0", "freeness-low"),
                   (6.5, "in", "i1", "freeness-high")]
    assert sim.counts["undrain"] == 1 and sim.counts["scale_out"] == 0
    assert sim.instances["i0"].phase is Phase.ACTIVE and sim.instances["i0"].stopped_at is None
    assert sim.metrics.tokens == [w.output_tokens for w in items]
