"""The migration protocol end to end in one event loop: two or three sim workers on an
in-memory network (real codec, no sockets) under a FakeClock. Every case checks the exact
tokens the client would see and that every allocator is back where it started."""

from __future__ import annotations

import pytest

from llumnix_zmq.engine.sim import pseudo_tokens
from llumnix_zmq.protocol.messages import MigCommit, MigrateCommand, Priority, SamplingParams
from llumnix_zmq.worker.migration import DstState, SrcState
from llumnix_zmq.worker.migration.testing import Mesh, settle

PROMPT = list(b"the quick brown fox jumps over")  # 30 tokens: 8 blocks of 4
N = 60


def sp(seed=None, n=N):
    return SamplingParams(max_tokens=n, seed=seed)


def order(src: str, dst: str, *rids: str, n: int = 1, cid: int = 1) -> MigrateCommand:
    return MigrateCommand(cid, src, dst, dst, n, tuple(rids))


@pytest.fixture
async def mesh():
    m = Mesh()
    yield m
    await m.close()


def assert_clean(*hosts) -> None:
    for h in hosts:
        h.engine.allocator_check()
        assert h.engine.num_free_blocks() == h.engine.num_blocks, h.instance_id
        assert not h.migration.outgoing and not h.migration.dest.sessions
        assert not h.frontend_of


def assert_exactly_once(mesh: Mesh, rid: str, want: list[int]) -> None:
    """The client's tokens are exact and no index was ever sent twice (no duplicate work)."""
    assert mesh.stream(rid) == want
    ds = sorted(mesh.deltas(rid), key=lambda d: d.start_index)
    assert [d.start_index for d in ds] == list(range(len(want)))
    assert sum(d.finish_reason != 0 for d in ds) == 1


async def run_to(mesh: Mesh, host, rid: str, tokens: int) -> None:
    await mesh.run(until=lambda: len(host.tokens(rid)) >= tokens)


@pytest.mark.parametrize("seed", [None, 7], ids=["greedy", "seeded"])
@pytest.mark.parametrize("at", [1, 25, N - 3], ids=["after-prefill", "mid-decode", "near-end"])
async def test_migrated_request_is_exact(mesh, at, seed):
    a, b = mesh.node("A"), mesh.node("B")
    await a.add("r", PROMPT, sp(seed))
    await run_to(mesh, a, "r", at)
    reply = await a.migration.start_command(order("A", "B", "r"))
    assert reply.accepted and reply.request_ids == ("r",)
    await mesh.run()
    assert_exactly_once(mesh, "r", pseudo_tokens(PROMPT, seed, 0, N))
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.DONE
    assert b.tokens("r") and b.outputs[-1][0] == "fe"  # streamed on to the same frontend
    assert a.migration.counts["committed"] == 1 and b.migration.counts["adopted"] == 1
    assert_clean(a, b)


async def test_staged_rounds_then_suspend_then_commit(mesh):
    a, b = mesh.node("A"), mesh.node("B")
    await a.add("r", list(range(40, 120)), sp(n=40))  # 80 prompt tokens: 20 blocks
    await run_to(mesh, a, "r", 2)
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.history == [SrcState.NEW, SrcState.PRECOPY, SrcState.SUSPENDED,
                             SrcState.COMMITTING, SrcState.DONE]
    assert m.rounds == 2 and m.next_stage == 8  # 20 full blocks in 3-block parts, then 2
    kinds = [k for s, d, k in mesh.net.log if (s, d) == ("A", "B")]
    assert kinds == ["MigPreAlloc"] * 8 + ["MigCommit"]
    assert_exactly_once(mesh, "r", pseudo_tokens(list(range(40, 120)), None, 0, 40))
    assert_clean(a, b)


async def test_blocking_copy_with_one_stage(mesh):
    a, b = mesh.node("A", max_stages=1), mesh.node("B")
    await a.add("r", list(range(40, 120)), sp(n=30))
    await run_to(mesh, a, "r", 3)
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.history[:3] == [SrcState.NEW, SrcState.SUSPENDED, SrcState.COMMITTING]
    assert m.rounds == 1
    assert_exactly_once(mesh, "r", pseudo_tokens(list(range(40, 120)), None, 0, 30))
    assert_clean(a, b)


async def test_migrated_twice_there_and_back(mesh):
    a, b = mesh.node("A"), mesh.node("B")
    await a.add("r", PROMPT, sp(3))
    await run_to(mesh, a, "r", 10)
    assert (await a.migration.start_command(order("A", "B", "r"))).accepted
    await run_to(mesh, b, "r", 10)
    assert "r" in b.frontend_of and "r" not in a.frontend_of
    assert (await b.migration.start_command(order("B", "A", "r", cid=2))).accepted
    await mesh.run()
    assert_exactly_once(mesh, "r", pseudo_tokens(PROMPT, 3, 0, N))
    assert a.migration.counts["adopted"] == 1 and b.migration.counts["committed"] == 1
    assert a.tokens("r")[-1] == pseudo_tokens(PROMPT, 3, N - 1, N)[0]  # finished back on A
    assert_clean(a, b)


async def test_queued_request_moves_without_kv(mesh):
    a, b = mesh.node("A", max_batch_size=1), mesh.node("B")
    await a.add("r1", PROMPT, sp())
    await a.add("r2", PROMPT[::-1], sp(5))
    await run_to(mesh, a, "r1", 3)
    assert a.engine.request_block_ids("r2") == []  # still queued
    reply = await a.migration.start_command(order("A", "B", "r2"))
    assert reply.accepted
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.history == [SrcState.NEW, SrcState.DEQUEUED, SrcState.COMMITTING, SrcState.DONE]
    assert [k for s, d, k in mesh.net.log if s == "A"] == ["MigCommit"]
    assert_exactly_once(mesh, "r2", pseudo_tokens(PROMPT[::-1], 5, 0, N))
    assert_exactly_once(mesh, "r1", pseudo_tokens(PROMPT, None, 0, N))
    assert not a.tokens("r2") and b.tokens("r2")
    assert_clean(a, b)


async def test_queued_request_comes_back_when_refused(mesh):
    a, b = mesh.node("A", max_batch_size=1), mesh.node("B")
    b.draining = True
    await a.add("r1", PROMPT, sp())
    await a.add("r2", PROMPT[::-1], sp())
    await run_to(mesh, a, "r1", 2)
    assert (await a.migration.start_command(order("A", "B", "r2"))).accepted
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.ABORTED and m.outcome.reason.endswith("draining")
    assert_exactly_once(mesh, "r2", pseudo_tokens(PROMPT[::-1], None, 0, N))
    assert_clean(a, b)


@pytest.mark.parametrize("policy,want", [("shortest-running", "late"), ("longest", "early"),
                                         ("fewest-blocks", "small"),
                                         ("lowest-priority", "early")])
async def test_source_choice_follows_the_policy(policy, want):
    mesh = Mesh(policy=policy)
    try:
        a, b = mesh.node("A", num_blocks=256), mesh.node("B", num_blocks=256)
        await a.add("early", PROMPT, sp(n=200))
        await mesh.run(until=lambda: len(a.tokens("early")) >= 1)
        mesh.clock.advance(1.0)
        await a.add("late", PROMPT + PROMPT, sp(n=200), priority=Priority.HIGH)
        await a.add("small", PROMPT[:3], sp(n=200), priority=Priority.HIGH)
        await mesh.run(until=lambda: len(a.tokens("small")) >= 1)
        reply = await a.migration.start_command(order("A", "B", n=1))
        assert reply.request_ids == (want,)
        await mesh.run(max_iters=3000)
        for rid in ("early", "late", "small"):
            assert len(mesh.stream(rid)) == 200
        assert_clean(a, b)
    finally:
        await mesh.close()


async def test_source_choice_skips_requests_too_big_for_the_destination():
    """The scheduler's pair carries the destination's room (max_blocks): the source's choice
    leaves out larger requests, whatever the policy prefers, and refuses when none fits."""
    mesh = Mesh(policy="longest")
    try:
        a, b = mesh.node("A", num_blocks=256), mesh.node("B", num_blocks=256)
        await a.add("big", PROMPT + PROMPT, sp(n=200))  # 60 tokens: 15+ blocks of 4
        await mesh.run(until=lambda: len(a.tokens("big")) >= 1)
        mesh.clock.advance(1.0)
        await a.add("small", PROMPT[:6], sp(n=200))  # 6 + 1 tokens: 2 blocks of 4
        await mesh.run(until=lambda: len(a.tokens("small")) >= 1)
        too_small = MigrateCommand(1, "A", "B", "B", 1, (), "", max_blocks=1)
        reply = await a.migration.start_command(too_small)
        assert not reply.accepted and reply.request_ids == ()
        fits = MigrateCommand(2, "A", "B", "B", 1, (), "", max_blocks=8)
        assert (await a.migration.start_command(fits)).request_ids == ("small",)
        await mesh.run(max_iters=3000)
        assert len(mesh.stream("big")) == 200 and len(mesh.stream("small")) == 200
        assert_clean(a, b)
    finally:
        await mesh.close()


async def test_concurrent_migrations_both_ways_and_load_annotation(mesh):
    a, b = mesh.node("A", max_concurrent=3), mesh.node("B")
    for i in range(4):
        await a.add(f"a{i}", PROMPT[i:], sp(i))
    await b.add("b0", PROMPT[5:], sp())
    await mesh.run(until=lambda: all(len(h.tokens(r)) >= 2 for h, r in
                                      [(a, "a0"), (a, "a3"), (b, "b0")]))
    mesh.net.filters.append(lambda s, d, m: "hold" if isinstance(m, MigCommit) else None)
    reply = await a.migration.start_command(order("A", "B", n=5))
    assert reply.accepted and len(reply.request_ids) == 3  # capped by max_concurrent
    assert (await b.migration.start_command(order("B", "A", "b0", cid=2))).accepted
    again = await a.migration.start_command(order("A", "B", "a0", cid=3))
    assert not again.accepted and "max_concurrent" in again.reason
    await settle()
    assert len(mesh.net.held) == 4  # every COMMIT held: all stages are in
    load = a.migration.annotate(a.engine.load())
    assert load.num_migrating_out == 3 and load.num_migrating_in == 1
    assert sorted(r.request_id for r in load.requests if r.migrating) == sorted(reply.request_ids)
    load = b.migration.annotate(b.engine.load())
    assert load.num_migrating_in == 3 and load.num_migrating_out == 1
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run()
    for i in range(4):
        assert_exactly_once(mesh, f"a{i}", pseudo_tokens(PROMPT[i:], i, 0, N))
    assert_exactly_once(mesh, "b0", pseudo_tokens(PROMPT[5:], None, 0, N))
    assert a.migration.annotate(a.engine.load()).num_migrating_out == 0
    assert_clean(a, b)


async def test_command_refusals(mesh):
    a, b = mesh.node("A"), mesh.node("B")
    assert not (await a.migration.start_command(order("A", "B", n=1))).accepted  # no candidate
    await a.add("r", PROMPT, sp())
    await run_to(mesh, a, "r", 1)
    reply = await a.migration.start_command(order("A", "B", "nope"))
    assert not reply.accepted and "not on A" in reply.reason
    assert not (await a.migration.start_command(order("A", "A", "r"))).accepted
    assert not (await a.migration.start_command(order("X", "B", "r"))).accepted
    await mesh.run()
    assert_clean(a, b)


async def test_destination_tombstone_and_counts(mesh):
    a, b = mesh.node("A"), mesh.node("B")
    await a.add("r", PROMPT, sp())
    await run_to(mesh, a, "r", 5)
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run()
    ((key, t),) = b.migration.dest.tombstones.items()
    assert key[1] == "r" and t.state is DstState.COMMITTED
    mesh.clock.advance(b.migration.cfg.tombstone_ttl_s + 1)
    await b.migration.tick()
    await a.migration.tick()
    assert not b.migration.dest.tombstones and not a.migration.moved
