"""``llumnix-zmq scheduler``: the global scheduler."""

from __future__ import annotations

import asyncio

import zmq.asyncio

from ..config import SchedulerConfig
from ..launch.launchers import make_launcher
from ..security.curve import security_from
from .service import SchedulerService


async def serve(cfg: SchedulerConfig, stop: asyncio.Event, launcher=None) -> None:
    if launcher is None:
        launcher = make_launcher(cfg.launcher, cfg.launch_template, cfg.compose_file,
                                 cfg.compose_service)
    ctx = zmq.asyncio.Context()
    security = security_from(cfg, "scheduler")
    if security is not None:
        security.start(ctx)
    try:
        await SchedulerService(cfg, ctx, launcher=launcher, security=security).run(stop)
    finally:
        if security is not None:
            security.stop()
        if hasattr(launcher, "close"):
            launcher.close()
        ctx.term()
