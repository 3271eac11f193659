"""``llumnix-zmq frontend``: the OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import logging

import zmq.asyncio
from aiohttp import web

from ..common.aio import supervise
from ..common.reqtrace import RequestTracer
from ..config import FrontendConfig
from ..security.curve import security_from
from ..tokenizer import load_tokenizer
from .cluster import Cluster
from .metrics import FrontendMetrics
from .server import FrontendServer

log = logging.getLogger(__name__)


async def serve(cfg: FrontendConfig, stop: asyncio.Event) -> None:
    tokenizer = load_tokenizer(cfg.engine, cfg.model)
    ctx = zmq.asyncio.Context()
    security = security_from(cfg, cfg.curve_name or "frontend")
    if security is not None:
        security.start(ctx)
    metrics = FrontendMetrics()
    cluster = Cluster(cfg, ctx, metrics, security)
    tracer = RequestTracer(cfg.trace_requests)
    server = FrontendServer(cfg, cluster, tokenizer, metrics, tracer)
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        cluster.start()
        for t in cluster.tasks:
            supervise(t, stop, log)
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        log.info("frontend serving %s on http://%s:%d/v1 (tokens at %s)",
                 server.model_name, cfg.host, cfg.port, cluster.tokens_address)
        await stop.wait()
    finally:
        await runner.cleanup()
        await cluster.close()
        tracer.close()
        if security is not None:
            security.stop()
        ctx.term()
        log.info("frontend stopped")
