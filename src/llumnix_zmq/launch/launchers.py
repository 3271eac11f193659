"""Launchers the auto-scaler uses to add and remove instances (``scheduler.policy.autoscale.
Launcher``): ``launch() -> instance id`` returns at once (the instance counts as pending until it
registers); ``stop(id)`` is the last step of a scale-in, after the instance drained itself.

- ``LocalProcessLauncher``: worker processes on this machine (what ``up --autoscale`` uses).
- ``ComposeLauncher``: ``docker compose up -d --scale SERVICE=N`` for a compose deployment.
A Kubernetes launcher implements the same two methods (scale a Deployment / delete a Pod).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time

from .local import _pdeathsig

log = logging.getLogger(__name__)


class LocalProcessLauncher:
    """Starts ``llumnix-zmq worker`` children from an argv template.

    ``template`` holds the worker flags shared by every instance; ``{id}`` in it is replaced by
    the new instance id (e.g. for an ipc address ``--bind ipc:///run/llumnix/{id}.sock``)."""

    def __init__(self, template: list[str], prefix: str = "auto", python: str = sys.executable):
        self.template = template
        self.prefix = prefix
        self.python = python
        self.procs: dict[str, subprocess.Popen] = {}
        self._n = 0

    def launch(self) -> str:
        self._n += 1
        iid = f"{self.prefix}-{self._n}"
        argv = [self.python, "-m", "llumnix_zmq.cli", "worker", "--instance-id", iid,
                *(a.replace("{id}", iid) for a in self.template)]
        self.procs[iid] = subprocess.Popen(argv, preexec_fn=_pdeathsig)
        log.info("launched %s (pid %d)", iid, self.procs[iid].pid)
        return iid

    def stop(self, instance_id: str) -> None:
        proc = self.procs.pop(instance_id, None)
        if proc is not None:
            _terminate({instance_id: proc}, 10.0)

    def reap(self) -> list[str]:
        """Children that exited by themselves (a drained worker stops when empty)."""
        gone = [iid for iid, p in self.procs.items() if p.poll() is not None]
        for iid in gone:
            log.info("%s exited with code %s", iid, self.procs.pop(iid).returncode)
        return gone

    def close(self, timeout: float = 8.0) -> None:
        """Stop every child: all are told at once and share one deadline (stopping them one
        after another could outlast whoever is stopping the scheduler)."""
        procs, self.procs = self.procs, {}
        _terminate(procs, timeout)


def _terminate(procs: dict[str, subprocess.Popen], timeout: float) -> None:
    """SIGTERM every live child, then wait for all under one deadline; kill the stubborn."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for iid, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs: killing", iid, timeout)
            proc.kill()
            proc.wait()
        log.info("stopped %s", iid)


class ComposeLauncher:
    """Scales a compose service. Instances are the service's replicas; a drained replica exits
    by itself (``stop_when_empty``), so ``stop`` lowers the replica count to match."""

    def __init__(self, compose_file: str, service: str = "worker",
                 compose: list[str] | None = None, replicas: int = 0, run=subprocess.run):
        self.file = compose_file
        self.service = service
        self.compose = compose or ["docker", "compose"]
        self.replicas = replicas
        self.run = run

    def command(self, replicas: int) -> list[str]:
        return [*self.compose, "-f", self.file, "up", "-d", "--no-recreate", "--scale",
                f"{self.service}={replicas}", self.service]

    def _scale(self, replicas: int) -> None:
        cmd = self.command(replicas)
        log.info("compose: %s", shlex.join(cmd))
        self.run(cmd, check=True)
        self.replicas = replicas

    def launch(self) -> str:
        self._scale(self.replicas + 1)
        return f"{self.service}-{self.replicas}"

    def stop(self, instance_id: str) -> None:
        self._scale(max(0, self.replicas - 1))


def make_launcher(kind: str, template: str = "", compose_file: str = "",
                  service: str = "worker"):
    if kind == "none" or not kind:
        return None
    if kind == "local":
        return LocalProcessLauncher(shlex.split(template))
    if kind == "compose":
        return ComposeLauncher(compose_file, service)
    raise ValueError(f"unknown launcher {kind!r} (none | local | compose)")
