"""Per-request stage timestamps across processes: where one request's latency goes.

A service started with ``--trace-requests PATH`` appends one line per event to PATH:

    <stage> <request id> <seconds>

Times are ``time.perf_counter()`` (on Linux CLOCK_MONOTONIC, as ``time.monotonic()``): one clock
for every process on a host, so a frontend's and a worker's events for the same request can be
subtracted. Lines are buffered and written out when the service stops (``close``); a service
killed with SIGKILL loses what it had not written. Off (no path), ``mark`` is one test.

Stages, in request order:

    frontend  accepted      the HTTP handler has the request (before parsing its body)
    frontend  submitted     the GenerateRequest is on its way to the worker
    worker    received      the worker decoded the GenerateRequest
    worker    added         ... and the engine took it
    worker    first_emit    the engine step that made its first token has ended (before sending)
    frontend  first_token   its first token applied to the stream
    frontend  first_write   the SSE chunk with its first text written to the client's socket

``received`` → ``first_emit`` is the time the request spent in the engine; what the mesh adds
to a client's time to first token is the rest (bench/serving_overhead.py, ``paired``).
"""

from __future__ import annotations

import time
from typing import Iterable

STAGES = ("accepted", "submitted", "received", "added", "first_emit", "first_token",
          "first_write")


class RequestTracer:
    def __init__(self, path: str = ""):
        self._fh = open(path, "a", buffering=1 << 16, encoding="ascii") if path else None

    @property
    def enabled(self) -> bool:
        return self._fh is not None

    def mark(self, stage: str, request_id: str, at: float | None = None) -> None:
        """Record ``stage`` of ``request_id`` now (or at ``at``, a perf_counter time)."""
        if self._fh is None:
            return
        self._fh.write(f"{stage} {request_id} {time.perf_counter() if at is None else at!r}\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_traces(paths: Iterable[str]) -> dict[str, dict[str, float]]:
    """{request id: {stage: time}} from trace files (the first time of each stage; malformed
    lines, e.g. one cut short by a killed process, are skipped)."""
    out: dict[str, dict[str, float]] = {}
    for path in paths:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 3:
                    continue
                try:
                    t = float(parts[2])
                except ValueError:
                    continue
                out.setdefault(parts[1], {}).setdefault(parts[0], t)
    return out
