"""``llumnix-zmq scheduler``: the global scheduler."""

from __future__ import annotations

import asyncio

import zmq.asyncio

from ..config import SchedulerConfig
from ..launch.launchers import make_launcher
from .service import SchedulerService


async def serve(cfg: SchedulerConfig, stop: asyncio.Event, launcher=None) -> None:
    if launcher is None:
        launcher = make_launcher(cfg.launcher, cfg.launch_template, cfg.compose_file,
                                 cfg.compose_service)
    ctx = zmq.asyncio.Context()
    try:
        await SchedulerService(cfg, ctx, launcher=launcher).run(stop)
    finally:
        if hasattr(launcher, "close"):
            launcher.close()
        ctx.term()
