"""``llumnix-zmq worker``: one engine, one llumlet."""

from __future__ import annotations

import asyncio
import logging
import os

import zmq.asyncio

from ..clock import SystemClock
from ..config import WorkerConfig
from ..security.curve import security_from
from .engines import make_engine
from .service import WorkerService

log = logging.getLogger(__name__)


def _own_key(cfg: WorkerConfig) -> str:
    """An instance-specific key if the keys directory has one, else the shared worker key."""
    if cfg.curve_dir and cfg.instance_id and os.path.exists(
            os.path.join(cfg.curve_dir, f"{cfg.instance_id}.key_secret")):
        return cfg.instance_id
    return ""


async def serve(cfg: WorkerConfig, stop: asyncio.Event) -> None:
    clock = SystemClock()
    engine = make_engine(cfg, clock)
    ctx = zmq.asyncio.Context()
    security = security_from(cfg, cfg.curve_name or _own_key(cfg) or "worker")
    if security is not None:
        security.start(ctx)
    try:
        service = WorkerService(cfg, ctx, engine, clock, security)
        await service.run(stop)
    finally:
        if security is not None:
            security.stop()
        ctx.term()
