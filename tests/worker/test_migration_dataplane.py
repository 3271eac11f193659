"""Send buffers of the data plane: lent per stage, reused only after that stage's ACK.

- On a wire that reads each stage's frames late (as libzmq's I/O thread reads a zero-copy
  frame after ``send`` returned), the blocks still arrive exactly: a buffer reused too early
  would carry the next stage's blocks. A buffer the engine did not gather into goes straight
  back.
- With real sockets (two WorkerServices with tiny torch engines in one process, over ipc, many
  parts per round): exact blocks for consecutive and scattered ids on both ends, a second
  migration through the same buffers leaves the first one's blocks alone, and no more buffers
  are made than the window keeps in flight."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import zmq
import zmq.asyncio

torch = pytest.importorskip("torch")

from llumnix_zmq.config import WorkerConfig  # noqa: E402
from llumnix_zmq.engine.torch import make_torch_engine  # noqa: E402
from llumnix_zmq.protocol.messages import MigrateCommand, RequestState, SamplingParams  # noqa: E402
from llumnix_zmq.worker.migration import SrcState  # noqa: E402
from llumnix_zmq.worker.migration.dataplane import SendBuffers  # noqa: E402
from llumnix_zmq.worker.migration.testing import Mesh  # noqa: E402
from llumnix_zmq.worker.service import WorkerService  # noqa: E402

BS = 16  # tiny model: 8 KiB blocks; parts of 10 blocks are over pyzmq's copy threshold
PART_BLOCKS = 10  # (64 KiB), so libzmq reads the lent buffers themselves
WINDOW = 2


def test_send_buffers_lend_and_keep():
    pool = SendBuffers(1024, keep=2)
    a, b, c = pool.take(), pool.take(), pool.take()
    assert pool.made == 3 and a.nbytes == 1024 and a.dtype == np.uint8
    for buf in (a, b, c):
        pool.give(buf)
    assert len(pool.free) == 2  # at most ``keep`` kept
    pool.give(np.empty(512, dtype=np.uint8))  # another size: dropped
    assert len(pool.free) == 2
    assert pool.take() is b and pool.take() is a and pool.made == 3


class LateWire:
    """A PeerTransport that hands each message to the in-memory network only a few loop turns
    after the one before it (a slow wire reading the caller's buffers late)."""

    def __init__(self, inner):
        self.inner = inner
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._deliver())

    @property
    def on_reply(self):
        return self.inner.on_reply

    def set_on_reply(self, on_reply) -> None:
        self.inner.set_on_reply(on_reply)

    async def send(self, address, msg, raw=()) -> None:
        self.queue.put_nowait((address, msg, list(raw)))  # the buffers, not their bytes

    async def _deliver(self) -> None:
        while True:
            address, msg, raw = await self.queue.get()
            for _ in range(10):
                await asyncio.sleep(0)
            await self.inner.send(address, msg, raw)  # the bytes are read now

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.mark.parametrize("stages", [1, 3], ids=["blocking", "staged"])
async def test_buffers_are_reused_only_after_the_ack(stages):
    mesh = Mesh(part_bytes=2 * 2048, window=WINDOW, max_stages=stages, last_stage_max_blocks=2)
    opts = {"num_blocks": 64, "block_size": 4, "max_batch_size": 8, "max_num_batched_tokens": 64}
    a = mesh.node("A", engine=make_torch_engine("tiny", **opts))  # 2 KiB blocks: 2 per part
    b = mesh.node("B", engine=make_torch_engine("tiny", **opts))
    a.migration.peers = LateWire(a.migration.peers)
    kv = plant(a, "r", 60, scattered=False, seed=3)
    assert (await a.migration.start_command(MigrateCommand(1, "A", "B", "B", 1, ("r",)))).accepted
    await mesh.run(until=lambda: not a.migration.outgoing)
    assert a.migration.history[-1].fsm.state is SrcState.DONE
    assert a.migration.history[-1].next_stage >= 8
    assert torch.equal(on_destination(b, "r")[:15], kv)  # the mesh decodes on: block 15+
    assert a.migration.send_buffers.made == WINDOW
    await a.migration.peers.close()
    await mesh.close()


async def test_a_buffer_the_engine_does_not_use_goes_straight_back():
    mesh = Mesh(window=WINDOW)  # sim engines: their own frames, 48-byte parts
    a, _ = mesh.node("A"), mesh.node("B")
    await a.add("r", list(range(1, 40)), SamplingParams(max_tokens=30, ignore_eos=True))
    await mesh.run(until=lambda: len(mesh.stream("r")) >= 2)
    assert (await a.migration.start_command(MigrateCommand(1, "A", "B", "B", 1, ("r",)))).accepted
    await mesh.run(until=lambda: not a.migration.outgoing)
    m = a.migration.history[-1]
    assert m.fsm.state is SrcState.DONE and m.next_stage > WINDOW and not m.lent
    assert a.migration.send_buffers.made == 1
    await mesh.close()


@pytest.fixture
async def pair(tmp_path):
    ctx = zmq.asyncio.Context()
    services, tasks = [], []
    for name in ("src", "dst"):
        engine = make_torch_engine("tiny", num_blocks=512, block_size=BS, max_batch_size=8,
                                   max_num_batched_tokens=64)
        cfg = WorkerConfig(scheduler=f"ipc://{tmp_path}/none.sock", instance_id=name,
                           bind=f"ipc://{tmp_path}/{name}.sock", engine="torch",
                           migration_timeout_s=5.0)
        s = WorkerService(cfg, ctx, engine)
        part = PART_BLOCKS * engine.kv_bytes_per_token * BS
        assert part > zmq.COPY_THRESHOLD
        s.migration.cfg = dataclasses.replace(s.migration.cfg, part_bytes=part, window=WINDOW)
        s.migration.send_buffers = SendBuffers(part, keep=WINDOW)
        tasks.append(asyncio.create_task(s.router.serve()))  # no engine loop: KV stays put
        s.migration.start()
        services.append(s)
    yield services
    for s in services:
        await s.migration.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in services:
        s.outputs.close()
        s.recv_from_peers.close(linger=0)
        s.to_scheduler.close(linger=0)
        s.executor.shutdown(wait=True)
    await asyncio.sleep(0.05)  # cancelled output watchers close their monitor sockets
    ctx.term()


def plant(s, rid: str, tokens: int, scattered: bool, seed: int) -> torch.Tensor:
    """A request of ``tokens`` computed tokens on ``s`` whose blocks hold random KV (every
    other free block when ``scattered``); returns that KV, [L, 2, n, bs, h, d]."""
    eng = s.engine
    n = -(-tokens // eng.block_size)
    ids = eng.reserve_blocks(2 * n if scattered else n)
    if scattered:
        eng.release_blocks(ids[1::2])
        ids = ids[::2]
    state = RequestState(rid, f"ipc://{rid}-fe", tuple(range(1, tokens + 1)), (7,),
                         SamplingParams(max_tokens=8, ignore_eos=True),
                         num_computed_tokens=tokens)
    eng.import_request(state, ids)
    kv = torch.randn(eng.kv.pool[ids].shape, generator=torch.Generator().manual_seed(seed))
    eng.kv.pool[ids] = kv
    s.frontend_of[rid] = state.frontend_address
    return kv


def scatter_free_blocks(s: WorkerService, n: int) -> None:
    """Leave the destination's next free blocks scattered (every other one taken)."""
    ids = s.engine.reserve_blocks(2 * n)
    s.engine.release_blocks(ids[::2])


async def migrate(src: WorkerService, dst: WorkerService, rid: str, stages: int) -> None:
    mig = src.migration
    mig.cfg = dataclasses.replace(mig.cfg, max_stages=stages)
    reply = await mig.start_command(MigrateCommand(1, "src", "dst", dst.address, 1, (rid,)))
    assert reply.accepted, reply
    for _ in range(1000):
        if rid not in mig.outgoing:
            break
        await asyncio.sleep(0.01)
    assert mig.history[-1].fsm.state is SrcState.DONE, mig.history[-1].outcome


def on_destination(dst, rid: str) -> torch.Tensor:
    return dst.engine.kv.pool[dst.engine.request_block_ids(rid)]


@pytest.mark.parametrize("scattered", [False, True], ids=["consecutive", "scattered"])
@pytest.mark.parametrize("stages", [1, 3], ids=["blocking", "staged"])
async def test_blocks_arrive_exactly_through_reused_buffers(pair, scattered, stages):
    src, dst = pair
    if scattered:
        scatter_free_blocks(dst, 120)
    first = plant(src, "a", 1500, scattered, seed=1)  # 94 blocks: 10 parts
    await migrate(src, dst, "a", stages)
    second = plant(src, "b", 1100, scattered, seed=2)
    await migrate(src, dst, "b", stages)
    assert torch.equal(on_destination(dst, "a"), first)
    assert torch.equal(on_destination(dst, "b"), second)
    m = src.migration.history[-1]
    assert m.next_stage >= 7 and not m.lent
    buffers = src.migration.send_buffers
    assert buffers.made <= WINDOW and len(buffers.free) == buffers.made
    assert not src.engine.has_request("a") and not src.engine.has_request("b")
