"""``llumnix-zmq worker``: one engine, one llumlet."""

from __future__ import annotations

import asyncio
import logging

import zmq.asyncio

from ..clock import SystemClock
from ..config import WorkerConfig
from .engines import make_engine
from .service import WorkerService

log = logging.getLogger(__name__)


async def serve(cfg: WorkerConfig, stop: asyncio.Event) -> None:
    clock = SystemClock()
    engine = make_engine(cfg, clock)
    ctx = zmq.asyncio.Context()
    try:
        service = WorkerService(cfg, ctx, engine, clock)
        await service.run(stop)
    finally:
        ctx.term()
