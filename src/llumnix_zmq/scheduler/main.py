"""``llumnix-zmq scheduler``: the global scheduler."""

from __future__ import annotations

import asyncio

import zmq.asyncio

from ..config import SchedulerConfig
from .service import SchedulerService


async def serve(cfg: SchedulerConfig, stop: asyncio.Event, launcher=None) -> None:
    ctx = zmq.asyncio.Context()
    try:
        await SchedulerService(cfg, ctx, launcher=launcher).run(stop)
    finally:
        ctx.term()
