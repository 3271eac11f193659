"""Every failure of the migration protocol, provoked on the in-memory network: the request
ends exactly once with the right tokens, and the allocators are back to their initial counts."""

from __future__ import annotations

import pytest

from llumnix_zmq.engine.sim import pseudo_tokens
from llumnix_zmq.protocol.messages import (ErrorCode, ErrorReply, MigAbort, MigAck, MigCommit,
                                           MigCommitted, MigPreAlloc)
from llumnix_zmq.worker.migration import DstState, SrcState
from llumnix_zmq.worker.migration.testing import Mesh, settle

from test_migration_protocol import (PROMPT, N, assert_clean, assert_exactly_once, order,
                                     run_to, sp)

WANT = pseudo_tokens(PROMPT, None, 0, N)


@pytest.fixture
async def mesh():
    m = Mesh()
    yield m
    await m.close()


def on(kind, action):
    """A network filter: ``action(src, dst, msg)`` for messages of type ``kind``."""
    return lambda s, d, m: action(s, d, m) if isinstance(m, kind) else None


def once(verdict):
    state = {"done": False}

    def f(s, d, m):
        if state["done"]:
            return None
        state["done"] = True
        return verdict(s, d, m) if callable(verdict) else verdict
    return f


async def start(mesh, at=10, **node_cfg):
    a, b = mesh.node("A", **node_cfg), mesh.node("B")
    await a.add("r", PROMPT, sp())
    await run_to(mesh, a, "r", at)
    return a, b


# --- the destination refuses or dies ------------------------------------------------------


async def test_destination_without_space_refuses_at_stage_0(mesh):
    a, b = mesh.node("A"), mesh.node("B", num_blocks=8)
    await a.add("r", PROMPT, sp())
    await run_to(mesh, a, "r", 10)
    assert (await a.migration.start_command(order("A", "B", "r"))).accepted
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.ABORTED and m.outcome.code == ErrorCode.NO_SPACE
    assert m.outcome.from_peer and next(iter(b.migration.dest.tombstones.values())).state \
        is DstState.ABORTED
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


async def test_destination_full_at_the_final_stage_resumes_the_source(mesh):
    a, b = await start(mesh, at=8, max_stages=2, part_bytes=1 << 20)  # 38 of 39 computed
    filler = []
    mesh.net.filters.append(on(MigAck, once(
        lambda s, d, m: filler.extend(b.engine.reserve_blocks(b.engine.num_free_blocks())))))
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run(until=lambda: not a.migration.outgoing)
    (m,) = a.migration.history
    assert m.fsm.history[-3:] == [SrcState.SUSPENDED, SrcState.COMMITTING, SrcState.ABORTED]
    assert m.outcome.code == ErrorCode.NO_SPACE
    assert [k for s, d, k in mesh.net.log if s == "A"] == ["MigPreAlloc", "MigPreAlloc", "MigCommit"]
    b.engine.release_blocks(filler)
    await mesh.run()
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


def _kill(mesh, name):
    def f(s, d, m):
        mesh.net.kill(name)
    return f


@pytest.mark.parametrize("when", ["before-stage-0", "after-an-ack", "commit-lost",
                                  "after-commit-applied"])
async def test_destination_dies_source_resumes(mesh, when):
    a, b = await start(mesh, max_stages=2, part_bytes=1 << 20)
    if when == "before-stage-0":
        mesh.net.kill("B")
    elif when == "after-an-ack":
        mesh.net.filters.append(on(MigAck, once(_kill(mesh, "B"))))
    elif when == "commit-lost":
        mesh.net.filters.append(on(MigCommit, lambda s, d, m: mesh.net.kill("B") or "drop"))
    else:  # B commits, then dies before COMMITTED is out
        mesh.net.filters.append(on(MigCommitted, lambda s, d, m: mesh.net.kill("B") or "drop"))
    await a.migration.start_command(order("A", "B", "r"))
    t0 = mesh.clock.now()
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.ABORTED
    want = ErrorCode.TIMEOUT if when == "before-stage-0" else ErrorCode.INSTANCE_DEAD
    assert m.outcome.code == want
    assert mesh.clock.now() - t0 >= a.migration.cfg.timeout_s  # fired from the FakeClock
    assert mesh.stream("r") == WANT and a.tokens("r")[-1] == WANT[-1]
    assert_clean(a)


# --- the source dies ------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after-an-ack", "commit-lost"])
async def test_source_dies_destination_frees_after_timeout(mesh, when):
    a, b = await start(mesh, max_stages=2)
    kind = MigAck if when == "after-an-ack" else MigCommit
    if kind is MigAck:
        mesh.net.filters.append(on(MigAck, once(_kill(mesh, "A"))))
    else:
        mesh.net.filters.append(on(MigCommit, lambda s, d, m: mesh.net.kill("A") or "drop"))
    await a.migration.start_command(order("A", "B", "r"))
    await settle()
    assert b.migration.dest.sessions and b.engine.num_free_blocks() < b.engine.num_blocks
    t0 = mesh.clock.now()
    await mesh.run()
    assert mesh.clock.now() - t0 >= b.migration.cfg.timeout_s
    (t,) = b.migration.dest.tombstones.values()
    assert t.state is DstState.ABORTED and t.code == ErrorCode.TIMEOUT
    assert_clean(b)


async def test_source_dies_after_commit_destination_finishes(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on(MigCommitted, lambda s, d, m: mesh.net.kill("A") or "drop"))
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run()
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(b)


# --- the request leaves mid-way -------------------------------------------------------------


async def test_request_finishes_during_a_stage(mesh):
    a, b = await start(mesh, at=N - 4)
    mesh.net.filters.append(on(MigPreAlloc, lambda s, d, m: "hold"))
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run(until=lambda: not a.migration.outgoing)
    (m,) = a.migration.history
    assert m.outcome.gone and m.outcome.reason == "finished"
    mesh.net.filters.clear()
    mesh.net.release_held()  # the stale stage arrives after the ABORT: answered, not opened
    await mesh.run()
    assert not b.migration.dest.sessions
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


async def test_client_disconnects_during_precopy(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on(MigPreAlloc, lambda s, d, m: "hold"))
    await a.migration.start_command(order("A", "B", "r"))
    await settle()
    assert await a.abort("r")
    await settle()
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run()
    (m,) = a.migration.history
    assert m.outcome.gone and m.outcome.reason == "aborted"
    assert not b.engine.has_request("r")
    assert_clean(a, b)


async def test_client_disconnects_during_commit_abort_follows_the_request(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on(MigCommit, lambda s, d, m: "hold"))
    await a.migration.start_command(order("A", "B", "r"))
    await settle()
    assert a.migration.outgoing["r"].fsm.state is SrcState.COMMITTING
    await a.abort("r")  # the client leaves: A frees its suspended copy at once
    assert not a.engine.has_request("r") and a.engine.num_free_blocks() == a.engine.num_blocks
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.DONE and m.abort_after_commit
    assert ("A", "B", "AbortRequest") in mesh.net.log
    assert not b.engine.has_request("r")
    assert_clean(a, b)


async def test_abort_after_migration_is_forwarded(mesh):
    a, b = await start(mesh)
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run(until=lambda: len(b.tokens("r")) >= 2)
    await a.abort("r")  # the frontend still thought the request was on A
    await settle()
    await mesh.run()
    assert len(mesh.stream("r")) < N and not b.engine.has_request("r")
    assert_clean(a, b)


async def test_preempted_during_precopy(mesh):
    a, b = mesh.node("A", num_blocks=24), mesh.node("B")
    await a.add("r1", PROMPT, sp())
    await a.add("r2", PROMPT[::-1], sp())
    await run_to(mesh, a, "r2", 1)
    mesh.net.filters.append(on(MigPreAlloc, lambda s, d, m: "hold"))
    await a.migration.start_command(order("A", "B", "r2"))
    await mesh.run(until=lambda: not a.migration.outgoing)
    (m,) = a.migration.history
    assert m.outcome.gone and m.outcome.reason == "preempted"
    assert a.engine.num_preemptions >= 1
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run()
    assert_exactly_once(mesh, "r1", WANT)
    assert mesh.stream("r2") == pseudo_tokens(PROMPT[::-1], None, 0, N)
    assert_clean(a, b)


# --- duplicated, lost, late, stale and foreign messages -------------------------------------


async def test_duplicated_stages_and_commit_are_idempotent(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on((MigPreAlloc, MigCommit), lambda s, d, m: "dup"))
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run()
    kinds = [k for s, d, k in mesh.net.log if s == "B"]
    assert kinds.count("MigCommitted") == 2 and "MigAbort" not in kinds
    assert b.migration.counts["adopted"] == 1
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


async def test_lost_committed_is_retried_with_the_same_ids(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on(MigCommitted, once("drop")))
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run()
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.DONE
    assert m.fsm.history.count(SrcState.COMMITTING) == 2  # one retry
    commits = [k for s, d, k in mesh.net.log if k == "MigCommit"]
    assert len(commits) == 2 and b.migration.counts["adopted"] == 1
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


async def test_late_stage_after_the_source_gave_up(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on(MigPreAlloc, lambda s, d, m: "hold"))
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run(until=lambda: not a.migration.outgoing)  # ACK timeout: ABORT sent
    (m,) = a.migration.history
    assert m.fsm.state is SrcState.ABORTED and m.outcome.code == ErrorCode.TIMEOUT
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run()
    assert not b.migration.dest.sessions
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


async def test_stale_ids_are_refused_or_answered_from_the_tombstone(mesh):
    a, b = await start(mesh)
    await a.migration.start_command(order("A", "B", "r"))
    await mesh.run(until=lambda: not a.migration.outgoing)
    (m,) = a.migration.history
    state = m.state
    again = await b.migration.on_peer_message(b"A", MigCommit(m.mid, "r", "A", state), [])
    assert isinstance(again, MigCommitted)  # a late duplicate COMMIT: same answer
    other = await b.migration.on_peer_message(b"A", MigCommit(m.mid + 1, "r", "A", state), [])
    assert isinstance(other, MigAbort) and other.code == ErrorCode.STALE
    stage = await b.migration.on_peer_message(b"A", MigPreAlloc(m.mid + 2, "x", "A", 3, 0, 1), [])
    assert isinstance(stage, MigAbort) and stage.code == ErrorCode.STALE
    a.migration.on_reply("B", MigAck(m.mid, "r", 0, (1, 2)), [])  # after the end: dropped
    a.migration.on_reply("B", MigCommitted(12345, "r", "B"), [])
    await mesh.run()
    assert_exactly_once(mesh, "r", WANT)
    assert b.migration.counts["adopted"] == 1
    assert_clean(a, b)


async def test_message_from_an_unknown_peer_is_refused(mesh):
    a, b = await start(mesh)
    mesh.net.filters.append(on(MigCommit, lambda s, d, m: "hold"))
    await a.migration.start_command(order("A", "B", "r"))
    await settle()
    m = a.migration.outgoing["r"]
    (session,) = b.migration.dest.sessions.values()
    blocks = list(session.block_ids)
    for msg in (MigCommit(m.mid, "r", "C", m.state), MigPreAlloc(m.mid, "r", "A", 9, 0, 1),
                MigAbort(m.mid, "r", ErrorCode.INTERNAL, "impostor")):
        reply = await b.migration.on_peer_message(b"C", msg, [])
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNKNOWN_PEER
    assert session.block_ids == blocks and session.fsm.state is DstState.RECEIVING
    # a reply to A from a peer that is not the destination is ignored too
    a.migration.on_reply("C", MigAbort(m.mid, "r", ErrorCode.INTERNAL, "impostor"), [])
    assert m.outcome is None
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run()
    assert m.fsm.state is SrcState.DONE
    assert_exactly_once(mesh, "r", WANT)
    assert_clean(a, b)


async def test_destination_busy_or_draining_refuses(mesh):
    a, b = mesh.node("A"), mesh.node("B", max_concurrent=1)
    for rid in ("r1", "r2"):
        await a.add(rid, PROMPT, sp())
    await run_to(mesh, a, "r2", 3)
    mesh.net.filters.append(on(MigCommit, lambda s, d, m: "hold"))
    assert (await a.migration.start_command(order("A", "B", "r1", "r2"))).accepted
    await settle()
    codes = [x.outcome.code for x in a.migration.history]
    assert codes == [ErrorCode.BUSY]
    mesh.net.filters.clear()
    mesh.net.release_held()
    b.draining = True
    await a.migration.start_command(order("A", "B", "r2", cid=2))
    await mesh.run()
    assert [x.outcome.code if x.outcome else None for x in a.migration.history] == \
        [ErrorCode.BUSY, None, ErrorCode.BUSY]
    for rid in ("r1", "r2"):
        assert_exactly_once(mesh, rid, WANT)
    assert_clean(a, b)
