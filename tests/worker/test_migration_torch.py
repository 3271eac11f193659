"""The migration protocol with the torch engine (tiny Llama, real KV tensors) on the in-memory
network: a migrated request produces exactly the tokens of an unmigrated run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
make_torch_engine = pytest.importorskip("llumnix_zmq.engine.torch").make_torch_engine

from llumnix_zmq.engine.base import EngineRequest  # noqa: E402
from llumnix_zmq.protocol.messages import MigrateCommand, SamplingParams  # noqa: E402
from llumnix_zmq.worker.migration import SrcState  # noqa: E402
from llumnix_zmq.worker.migration.testing import Mesh  # noqa: E402

torch.set_num_threads(2)
PROMPT = [256] + list(b"The quick brown fox jumps over the lazy dog, again")
N = 40
SAMPLINGS = {"greedy": SamplingParams(max_tokens=N, ignore_eos=True),
             "seeded": SamplingParams(max_tokens=N, temperature=0.8, top_p=0.9, seed=1234,
                                      ignore_eos=True)}


def engine(**kw):
    opts = dict(num_blocks=64, block_size=4, max_batch_size=8, max_num_batched_tokens=64)
    opts.update(kw)
    return make_torch_engine("tiny", **opts)


@pytest.fixture(scope="module")
def reference():
    out = {}
    for name, sp in SAMPLINGS.items():
        e = engine()
        e.add_request(EngineRequest("r", PROMPT, sp))
        toks = []
        while e.has_work():
            for d in e.step().deltas:
                toks.extend(d.token_ids)
        out[name] = toks
    return out


@pytest.fixture
async def mesh():
    m = Mesh(part_bytes=64 << 10)
    yield m
    await m.close()


def clean(*hosts):
    for h in hosts:
        h.engine.allocator_check()
        assert h.engine.num_free_blocks() == h.engine.num_blocks
        assert not h.migration.outgoing and not h.migration.dest.sessions


@pytest.mark.parametrize("kind", list(SAMPLINGS))
@pytest.mark.parametrize("moves", [(1,), (15,), (N - 3,), (8, 20)],
                         ids=["after-prefill", "mid-decode", "near-end", "there-and-back"])
async def test_torch_migration_is_exact(mesh, reference, kind, moves):
    hosts = [mesh.node("A", engine=engine()), mesh.node("B", engine=engine())]
    await hosts[0].add("r", PROMPT, SAMPLINGS[kind])
    for k, at in enumerate(moves):
        src, dst = hosts[k % 2], hosts[(k + 1) % 2]
        await mesh.run(until=lambda: len(mesh.stream("r")) >= at)
        reply = await src.migration.start_command(
            MigrateCommand(k + 1, src.instance_id, dst.instance_id, dst.instance_id, 1, ("r",)))
        assert reply.accepted, reply
        await mesh.run(until=lambda: not src.migration.outgoing)
        assert src.migration.history[-1].fsm.state is SrcState.DONE
    await mesh.run()
    assert mesh.stream("r") == reference[kind]
    clean(*hosts)


async def test_torch_queued_request_moves(mesh, reference):
    a = mesh.node("A", engine=engine(max_batch_size=1))
    b = mesh.node("B", engine=engine())
    await a.add("first", PROMPT[:20], SAMPLINGS["greedy"])
    await a.add("r", PROMPT, SAMPLINGS["seeded"])
    await mesh.run(until=lambda: len(mesh.stream("first")) >= 2)
    assert (await a.migration.start_command(MigrateCommand(1, "A", "B", "B", 1, ("r",)))).accepted
    await mesh.run()
    assert a.migration.history[-1].fsm.history[1] is SrcState.DEQUEUED
    assert mesh.stream("r") == reference["seeded"] and not a.tokens("r")
    clean(a, b)
