"""Staged migration in the simulator moves real blocks and frees them exactly."""

from __future__ import annotations

import pytest

from llumnix_zmq.engine.blocks import blocks_for_tokens
from llumnix_zmq.engine.sim import PROFILES, LatencyProfile
from llumnix_zmq.scheduler.policy.pairing import MigrationPair
from llumnix_zmq.sim import Simulation, SimulationConfig
from llumnix_zmq.workload import WorkItem

# 10 ms decode steps; KV 1 MB per token: a 16-token block is 16 MB = 2 ms at 64 Gb/s
ROUND = LatencyProfile("test-mig", a=0.1, b=0.0, c=10.0, d=0.0, e=0.0,
                       kv_bytes_per_token=1_000_000, num_blocks=100)


@pytest.fixture(autouse=True)
def profile(monkeypatch):
    monkeypatch.setitem(PROFILES, ROUND.name, ROUND)


def _sim(items, **kw) -> Simulation:
    cfg = SimulationConfig(instances=2, profile=ROUND.name, policy="round-robin",
                           requests=len(items), progress=False, handshake_ms=1.0, **kw)
    return Simulation(cfg, items)


def _used(sim, iid):
    e = sim.instances[iid].engine
    return e.num_blocks - e.num_free_blocks()


def test_two_stage_migration_moves_and_frees_blocks_exactly():
    # prompt 400 = 25 full blocks; prefill 40 ms, first token at 0.040
    sim = _sim([WorkItem(0.0, 400, 100)])
    seen = {}

    def order(_):
        e0 = sim.instances["i0"].engine
        seen["before"] = (_used(sim, "i0"), _used(sim, "i1"), e0.num_full_blocks("r0"))
        sim._order_migration(MigrationPair("i0", "i1", "load-balance", 1))
        # stage 1 runs at once: 25 full blocks reserved on i1 while r0 keeps decoding on i0
        seen["stage1"] = (_used(sim, "i0"), _used(sim, "i1"), sim.instances["i0"].migrating_out)

    done = []
    orig = sim.on_migration_done

    def on_done(mig, ok):
        done.append((mig.outcome, mig.stage, mig.blocks_copied, mig.downtime_s, sim.clock.t))
        for inst in sim.instances.values():
            inst.engine.allocator_check()
        seen["after"] = (_used(sim, "i0"), _used(sim, "i1"),
                         len(sim.instances["i1"].engine.request_block_ids("r0")),
                         sim.instances["i1"].engine.export_state("r0").num_computed_tokens)
        orig(mig, ok)

    sim.on_migration_done = on_done
    sim.queue.at(0.0405, order)
    sim.run()
    # at 0.0405 the step computing position 400 (o0) is in flight: 26 blocks, 25 of them full
    assert seen["before"] == (26, 0, 25)
    assert seen["stage1"] == (26, 25, 1)
    # stage 1 took 25 x 2 ms + 1 ms = 51 ms; r0 decoded ~5 more tokens: 26 blocks, 25 full,
    # 1 left <= 16 -> last stage copies 1 block: downtime 2 ms + 1 ms
    (outcome, stages, copied, downtime, t_commit) = done[0]
    assert outcome == "committed" and stages == 1 and copied == 26
    assert downtime == pytest.approx(0.003)
    assert t_commit == pytest.approx(0.0405 + 0.051 + 0.003)
    used0, used1, nblocks, computed = seen["after"]
    assert used0 == 0 and used1 == nblocks == blocks_for_tokens(computed + 1, 16)
    # the request finished on i1 with every token, and every block is free again
    m = sim.metrics.arrays()
    assert sim.metrics.tokens[0] == 100 and sim.counts["migrations_committed"] == 1
    assert m["e2e"][0] > 0
    for inst in sim.instances.values():
        inst.engine.allocator_check()
        assert inst.engine.num_free_blocks() == inst.engine.num_blocks


def test_destination_without_space_aborts_and_keeps_request_on_source():
    sim = _sim([WorkItem(0.0, 400, 50)])
    held = []
    outcomes = []

    def order(_):
        e1 = sim.instances["i1"].engine
        held.extend(e1.reserve_blocks(e1.num_blocks - 10))  # only 10 free: stage 1 needs 25
        sim._order_migration(MigrationPair("i0", "i1", "load-balance", 1))
        outcomes.append((_used(sim, "i0"), _used(sim, "i1")))
        e1.release_blocks(held)

    orig = sim.on_migration_done
    sim.on_migration_done = lambda mig, ok: (outcomes.append(mig.outcome), orig(mig, ok))
    sim.queue.at(0.0405, order)
    sim.run()
    assert outcomes == ["no-space", (26, 90)]
    assert sim.metrics.tokens[0] == 50 and sim.counts["migrations_committed"] == 0
    for inst in sim.instances.values():
        inst.engine.allocator_check()
        assert inst.engine.num_free_blocks() == inst.engine.num_blocks


def test_max_stages_one_is_a_blocking_copy():
    """max_stages counts the last stage (as worker/migration's rounds): 1 = suspend and copy
    everything at once, so the downtime holds all 26 blocks: 26 x 2 ms + 1 ms."""
    sim = _sim([WorkItem(0.0, 400, 100)], max_stages=1)
    done = []
    orig = sim.on_migration_done
    sim.on_migration_done = lambda mig, ok: (done.append((mig.stage, mig.downtime_s)), orig(mig, ok))
    sim.queue.at(0.0405, lambda _: sim._order_migration(MigrationPair("i0", "i1", "load-balance")))
    sim.run()
    assert done[0][0] == 0 and done[0][1] == pytest.approx(26 * 0.002 + 0.001)
    assert sim.metrics.tokens[0] == 100
