"""common/aio.run_service: the loop it runs a service on, and what it does before serving."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from llumnix_zmq.common.aio import run_service


def test_run_service_freezes_the_startup_heap_and_stops_on_sigterm():
    seen = {}

    async def main(stop: asyncio.Event) -> None:
        seen["frozen"] = gc.get_freeze_count()
        seen["loop"] = type(asyncio.get_running_loop()).__module__
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        seen["stopped"] = stop.is_set()

    try:
        run_service(main)
    finally:
        gc.unfreeze()
        asyncio.set_event_loop_policy(None)  # run_service installed uvloop's policy
    assert seen["frozen"] > 1000  # the modules and objects alive before serving
    assert seen["loop"].startswith("uvloop")
    assert seen["stopped"] is True
