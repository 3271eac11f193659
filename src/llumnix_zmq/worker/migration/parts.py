"""The data-plane half of a source migration: exporting a request's blocks as parts and
sending them as PRE_ALLOC stages (ZeroMQ frames, or NCCL when both ends hold CUDA tensors).

Zero-copy parts. Where the engine can (``export_block_views``) a full-size part of
``view_part_bytes`` goes out as views of the cache itself, with no gather copy; libzmq reads
them when it sends. Such blocks must keep their contents until the destination has them:

| while the view stage is unacknowledged | why the bytes it reads are the request's own       |
|----------------------------------------|----------------------------------------------------|
| pre-copy (request decoding)            | only full blocks are sent, and KV is append-only    |
| final round (suspended, lock held)     | nothing writes a suspended request's blocks         |
| request freed (finished, aborted,      | the migration fails: ABORT follows on the same pipe |
| preempted) before COMMIT               | and the destination never commits what it got       |

and the COMMIT is sent only once every view stage is acknowledged (``_views_acked``), so a
request freed later (a client abort while COMMITTING) can no longer change what was sent. The
final round's last part is always gathered, so that wait is over before its ACK would be.
"""

from __future__ import annotations

import asyncio

import numpy as np

from ...protocol.messages import MigPreAlloc
from .dataplane import frames_nbytes


class PartSender:
    """Mixed into ``SourceMigration`` (source.py), whose state it reads and advances: the
    coordinator ``c``, ``rid``/``mid``/``peer``, the stage counter and ACK futures (``acks``,
    ``next_stage``), send buffers on loan (``lent``), and the figures (``bytes_sent``,
    ``part_sizes``, ``export_s``); it calls back ``_check_running``, ``_await`` and
    ``_num_tokens``."""

    async def _send_blocks(self, start: int, end: int, running: bool) -> list[asyncio.Future]:
        """PRE_ALLOC stages for blocks [start, end), each under ``part_bytes``.

        Pre-copy (``running``): each lock hold exports parts until ``window`` of them are
        unacknowledged, then they go out and the engine gets the lock back for a step; so the
        copy advances by up to ``window * part_bytes`` per engine step. The final stage runs
        under the caller's lock hold (the request is suspended), one part at a time with up to
        ``window`` unacknowledged; its last ACKs are not waited for."""
        futs: list[asyncio.Future] = []
        pos = start
        while pos < end:
            if running:
                async with self.c.lock:
                    self._check_running()
                    batch = await self._export_parts(pos, end, self.c.cfg.window - _open(futs),
                                                     running)
            else:
                if self.outcome is not None:
                    raise self.outcome
                batch = await self._export_parts(pos, end, 1, running)
            for first, n, frames, buf, view in batch:
                futs.append(await self._send_part(first, n, frames, buf))
                if view:
                    self.viewed.append(futs[-1])
                    self.view_stages.append(self.next_stage - 1)
                pos = first + n
            if pos < end and _open(futs) >= self.c.cfg.window:
                await self._await(next(f for f in futs if not f.done()), self.c.cfg.timeout_s)
        return futs

    async def _export_parts(self, pos: int, end: int, count: int, running: bool) -> list:
        """Up to ``count`` (at least one) exported parts from block ``pos`` on, each
        ``(first, n, frames, send buffer or None, sent as views)``."""
        out = []
        while pos < end and (not out or len(out) < count):
            n = min(self.blocks_per_part, end - pos)
            t0, buf = self.c.clock.now(), None
            views = self._export_views(pos, end, running)
            if views is not None:
                n, frames = views
            elif self.c.uses_nccl():  # device tensors: they go over NCCL, not ZeroMQ
                frames = await self.c.run_engine(
                    lambda: self.c.engine.export_blocks(self.rid, pos, pos + n, to_numpy=False))
            else:
                buf = self.c.send_buffers.take()
                frames = await self.c.run_engine(self.c.engine.export_blocks_into, self.rid,
                                                 pos, pos + n, buf)
                if not any(np.may_share_memory(f, buf) for f in frames):  # not gathered into
                    self.c.send_buffers.give(buf)
                    buf = None
            self.export_s += self.c.clock.now() - t0
            nbytes = frames_nbytes(frames)
            if nbytes and views is None:
                self.blocks_per_part = max(1, self.c.cfg.part_bytes // max(1, nbytes // n))
            out.append((pos, n, frames, buf, views is not None))
            pos += n
        return out

    def _export_views(self, pos: int, end: int, running: bool) -> tuple[int, list] | None:
        """A full-size zero-copy part from block ``pos`` on, ``(n, frames)``, or None (then
        the part is gathered). Never the final round's last part: see the module comment."""
        n = self.view_blocks
        export = getattr(self.c.engine, "export_block_views", None)
        if not n or export is None or self.c.uses_nccl() or end - pos < n or \
                (not running and end - pos == n):
            return None
        frames = export(self.rid, pos, pos + n, self.c.cfg.view_min_frame_bytes)
        return (n, frames) if frames else None

    async def _send_part(self, first: int, n: int, frames, buf=None) -> asyncio.Future:
        stage = self.next_stage
        self.next_stage += 1
        fut = _future()
        self.acks[stage] = fut
        if buf is not None:
            self.lent[stage] = buf
        msg = MigPreAlloc(self.mid, self.rid, self.c.instance_id, stage, first, n,
                          self._num_tokens())
        self.contacted = True
        if self.c.uses_nccl() and frames:
            await self._send_part_nccl(msg, frames[0])
        else:
            await self.c.peers.send(self.peer, msg, frames)
        self.bytes_sent += frames_nbytes(frames)
        self.part_sizes.append(frames_nbytes(frames))
        return fut

    async def _send_part_nccl(self, msg: MigPreAlloc, tensor) -> None:
        from . import nccl

        pair = self.c.nccl_out.get(self.peer)
        uid = None
        if pair is None:
            pair = self.c.nccl_out[self.peer] = nccl.NcclPair(0)
            uid = pair.uid
        dtype = str(tensor.dtype).removeprefix("torch.")
        await self.c.peers.send(self.peer, msg, [nccl.describe(tensor.shape, dtype, uid)])
        await asyncio.to_thread(pair.send, tensor)


    async def _views_acked(self) -> None:
        """Every stage sent as views of the cache is in the destination (so libzmq has read
        them) before the COMMIT can go: still SUSPENDED, a failure here only resumes."""
        for fut in self.viewed:
            await self._await(fut, self.c.cfg.timeout_s)
        self.viewed.clear()



def _future() -> asyncio.Future:
    """A future whose exception counts as retrieved (final-stage ACKs are never awaited)."""
    fut = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


def _open(futs) -> int:
    return sum(1 for f in futs if not f.done())
