"""Zero-copy parts (views of the source's cache, source.py "Zero-copy parts") on the torch
engine, over the in-memory network with ``lazy_frames``: frames are read when delivered, as
libzmq reads them whenever its I/O thread gets to them. The tokens stay exact; the COMMIT waits
for every view stage's ACK; a request freed (and its blocks rewritten) while its view stages
are unread never reaches a committed request."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
make_torch_engine = pytest.importorskip("llumnix_zmq.engine.torch").make_torch_engine

from llumnix_zmq.engine.base import EngineRequest  # noqa: E402
from llumnix_zmq.protocol.messages import MigrateCommand, SamplingParams  # noqa: E402
from llumnix_zmq.worker.migration import SrcState  # noqa: E402
from llumnix_zmq.worker.migration.testing import Mesh, settle  # noqa: E402
from test_migration_torch import clean  # noqa: E402  (same dir on sys.path)

torch.set_num_threads(2)
PROMPT = [256] + list(b"The quick brown fox jumps over the lazy dog, and again and again")
N = 30
GREEDY = SamplingParams(max_tokens=N, ignore_eos=True)


def engine():
    return make_torch_engine("tiny", num_blocks=64, block_size=4, max_batch_size=8,
                             max_num_batched_tokens=128)


@pytest.fixture(scope="module")
def reference():
    e = engine()
    e.add_request(EngineRequest("r", PROMPT, GREEDY))
    toks = []
    while e.has_work():
        for d in e.step().deltas:
            toks.extend(d.token_ids)
    return toks


@pytest.fixture
async def mesh():
    per_block = engine().kv_bytes_per_token * 4
    m = Mesh(part_bytes=2 * per_block, view_part_bytes=3 * per_block, view_min_frame_bytes=0)
    m.net.lazy_frames = True
    yield m
    await m.close()


async def start(mesh, a, b, at: int, stages: int, window: int = 4):
    await a.add("r", PROMPT, GREEDY)
    await mesh.run(until=lambda: len(mesh.stream("r")) >= at)
    a.migration.cfg = dataclasses.replace(a.migration.cfg, max_stages=stages, window=window)
    reply = await a.migration.start_command(MigrateCommand(1, "A", "B", "B", 1, ("r",)))
    assert reply.accepted, reply


@pytest.mark.parametrize("stages", [1, 3], ids=["blocking", "staged"])
async def test_views_migration_is_exact(mesh, reference, stages):
    a, b = mesh.node("A", engine=engine()), mesh.node("B", engine=engine())
    await start(mesh, a, b, 5, stages)
    await mesh.run(until=lambda: not a.migration.outgoing)
    m = a.migration.history[-1]
    assert m.fsm.state is SrcState.DONE and m.view_stages and not m.viewed
    await mesh.run()
    assert mesh.stream("r") == reference
    clean(a, b)


async def test_commit_waits_for_every_view_stage_ack(mesh, reference):
    a, b = mesh.node("A", engine=engine()), mesh.node("B", engine=engine())
    mesh.net.filters.append(lambda s, d, msg: "hold" if s == "A" else None)
    await start(mesh, a, b, 5, 1, window=64)  # every stage goes out without an ACK
    await settle(100)  # no clock time passes: nothing times out
    m = a.migration.outgoing["r"]
    assert m.view_stages and m.next_stage > m.view_stages[-1] + 1  # the last part: gathered
    assert m.fsm.state is SrcState.SUSPENDED  # all stages out, the COMMIT held back
    assert "MigPreAlloc" in _held_types(mesh) and "MigCommit" not in _held_types(mesh)
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run(until=lambda: not a.migration.outgoing)
    assert m.fsm.state is SrcState.DONE
    log = [(s, t) for s, _, t in mesh.net.log]
    commit = log.index(("A", "MigCommit"))
    acks = sum(1 for s, t in log[:commit] if (s, t) == ("B", "MigAck"))
    assert acks >= m.view_stages[-1] + 1
    await mesh.run()
    assert mesh.stream("r") == reference
    clean(a, b)


def _held_types(mesh) -> list[str]:
    from llumnix_zmq.protocol.codec import decode

    return [type(decode(frames)[0]).__name__ for _, _, frames in mesh.net.held]


async def test_request_freed_before_its_views_are_read_never_commits(mesh):
    """The source request leaves while its view stages sit unread; its freed blocks are then
    rewritten (another request's KV). The destination reads the rewritten bytes, but the
    migration aborts: nothing is committed, both sides are clean."""
    a, b = mesh.node("A", engine=engine()), mesh.node("B", engine=engine())
    mesh.net.filters.append(lambda s, d, msg: "hold" if s == "A" else None)
    await start(mesh, a, b, 5, 1, window=64)
    await settle(100)
    m = a.migration.outgoing["r"]
    assert m.fsm.state is SrcState.SUSPENDED and m.view_stages
    ids = a.engine.request_block_ids("r")
    await a.abort("r")  # the client left: the blocks are free on the source
    await settle()
    a.engine.kv.pool[ids] = -7.0  # the freed blocks now hold someone else's KV
    mesh.net.filters.clear()
    mesh.net.release_held()
    await mesh.run(until=lambda: not a.migration.outgoing and not b.migration.dest.sessions)
    assert m.fsm.state is SrcState.ABORTED
    assert ("A", "B", "MigCommit") not in mesh.net.log
    assert not b.engine.has_request("r") and not a.engine.has_request("r")
    a.engine.kv.pool[ids] = 0.0
    clean(a, b)
