"""Process plumbing shared by the three services: uvloop, logging, signals, task supervision."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Awaitable, Callable


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
    )


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` on uvloop; SIGINT/SIGTERM only set the event (the service
    releases its resources itself, in one place).

    What was allocated before serving (modules, configuration: most of a service's heap) is
    frozen out of the garbage collector (``gc.freeze``), so the full collections that the
    serving path's allocations trigger from time to time scan only what serving made: shorter
    pauses in the request path."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gc.collect()
        gc.freeze()
        await main(stop)

    asyncio.run(runner())


def supervise(task: asyncio.Task, stop: asyncio.Event, log: logging.Logger) -> None:
    """A background task that dies unexpectedly stops the service loudly (no silent zombie)."""

    def done(t: asyncio.Task) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("task %s died: %r", t.get_name(), exc, exc_info=exc)
            stop.set()

    task.add_done_callback(done)


async def cancel_all(tasks) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
