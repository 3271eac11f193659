"""Local process launcher: a scheduler, N workers and a frontend on one machine.

Used by ``llumnix-zmq up``, by the auto-scaler's local launcher and by integration tests.
Children get PR_SET_PDEATHSIG (Linux) so a launcher killed with SIGKILL leaves no orphans;
a clean stop sends SIGTERM frontend-first, waits, then SIGKILLs stragglers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    reported_exit: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ClusterSpec:
    engine: str = "sim"
    model: str = "sim"
    instances: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    profile: str = "llama-7b-a10"
    time_scale: float = 1.0
    dispatch_policy: str = "llumnix"
    enable_migration: bool = True
    admin_key: str = ""
    api_keys: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    transport: str = "ipc"  # ipc | tcp
    worker_args: list[str] = field(default_factory=list)
    scheduler_args: list[str] = field(default_factory=list)
    frontend_args: list[str] = field(default_factory=list)
    log_dir: str = ""  # empty: children inherit stdout/stderr
    curve_dir: str = ""  # CURVE keys for every inter-service socket (made if missing)


class LocalCluster:
    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.rundir = tempfile.mkdtemp(prefix="llumnix-")
        self.children: list[Child] = []
        self._next_worker = 0
        self.scheduler_address = self.address("scheduler")

    # --- addresses -------------------------------------------------------------------------
    def address(self, name: str) -> str:
        if self.spec.transport == "ipc":
            return f"ipc://{self.rundir}/{name}.sock"
        return "tcp://127.0.0.1:0" if name != "scheduler" else f"tcp://127.0.0.1:{_free_port()}"

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    # --- children --------------------------------------------------------------------------
    def _cmd(self, role: str, *args: str) -> list[str]:
        curve = ["--curve-dir", self.spec.curve_dir] if self.spec.curve_dir else []
        return [sys.executable, "-m", "llumnix_zmq.cli", role, "--log-level",
                self.spec.log_level, *curve, *args]

    def _start(self, child: Child) -> Child:
        out = None
        if self.spec.log_dir:
            os.makedirs(self.spec.log_dir, exist_ok=True)
            out = open(os.path.join(self.spec.log_dir, f"{child.name}.log"), "ab")
        env = dict(os.environ)
        env.pop("LLUMNIX_ADMIN_KEY", None)  # passed explicitly as a flag where needed
        child.proc = subprocess.Popen(child.argv, stdout=out, stderr=subprocess.STDOUT if out
                                      else None, preexec_fn=_pdeathsig, env=env)
        if out is not None:
            out.close()
        self.children.append(child)
        log.info("started %s (pid %d)", child.name, child.proc.pid)
        return child

    def start_scheduler(self) -> Child:
        s = self.spec
        args = ["--bind", self.scheduler_address, "--dispatch-policy", s.dispatch_policy,
                "--enable-migration" if s.enable_migration else "--no-enable-migration",
                *s.scheduler_args]
        return self._start(Child("scheduler", self._cmd("scheduler", *args)))

    def worker_args(self, name: str) -> list[str]:
        s = self.spec
        curve = ["--curve-dir", s.curve_dir] if s.curve_dir else []
        return ["--scheduler", self.scheduler_address, "--bind", self.address(name),
                "--engine", s.engine, "--model", s.model, "--profile", s.profile,
                "--time-scale", str(s.time_scale), "--log-level", s.log_level, *curve,
                *s.worker_args]

    def worker_template(self) -> str:
        """Worker flags for the scheduler's local launcher ({id}: the new instance's id)."""
        import shlex

        return shlex.join(self.worker_args("{id}"))

    def start_worker(self, extra: list[str] | None = None) -> Child:
        index = self._next_worker
        name = f"worker-{index}"
        self._next_worker += 1
        args = ["--instance-id", name, *self.worker_args(name), *(extra or [])]
        if self.spec.engine == "vllm" and not any(a.startswith("--cpu-bind") for a in args):
            # vLLM on CPU binds its OpenMP threads: one core per worker, round robin
            args += ["--cpu-bind", str(index % (os.cpu_count() or 1))]
        return self._start(Child(name, self._cmd("worker", *args)))

    def start_frontend(self) -> Child:
        s = self.spec
        args = ["--scheduler", self.scheduler_address, "--bind-tokens", self.address("tokens"),
                "--host", s.host, "--port", str(s.port), "--engine", s.engine,
                "--model", s.model, "--dispatch-policy", s.dispatch_policy,
                "--expect-instances", str(s.instances), *s.frontend_args]
        if s.admin_key:
            args += ["--admin-key", s.admin_key]
        for key in s.api_keys:
            args += ["--api-keys", key]
        return self._start(Child("frontend", self._cmd("frontend", *args)))

    def start(self) -> None:
        if self.spec.curve_dir:
            from ..security.keys import make_keys

            make_keys(self.spec.curve_dir, ["scheduler", "frontend", "worker"])
        self.start_scheduler()
        for _ in range(self.spec.instances):
            self.start_worker()
        self.start_frontend()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        c = self.child(name)
        if c.alive:
            c.proc.send_signal(sig)
            c.proc.wait(10)

    # --- readiness and supervision ---------------------------------------------------------
    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503 while starting: still a JSON status
            try:
                return json.loads(exc.read())
            except ValueError:
                return None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h and h.get("status") == "ok":
                return True
            if any(c.proc.poll() is not None for c in self.children
                   if c.name in ("scheduler", "frontend")):
                return False
            time.sleep(0.1)
        return False

    def reap(self) -> list[Child]:
        """Children that exited since the last call (each logged once)."""
        dead = []
        for c in self.children:
            if not c.reported_exit and c.proc is not None and c.proc.poll() is not None:
                c.reported_exit = True
                log.warning("%s (pid %d) exited with code %s", c.name, c.proc.pid,
                            c.proc.returncode)
                dead.append(c)
        return dead

    def stop(self, timeout: float = 10.0) -> None:
        order = sorted(self.children, key=lambda c: {"frontend": 0, "scheduler": 2}.get(c.name, 1))
        for group in (0, 1, 2):
            procs = [c for c in order if {"frontend": 0, "scheduler": 2}.get(c.name, 1) == group]
            for c in procs:
                if c.alive:
                    c.proc.terminate()
            deadline = time.monotonic() + timeout
            for c in procs:
                if c.proc is None:
                    continue
                try:
                    c.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0fs: killing", c.name, timeout)
                    c.proc.kill()
                    c.proc.wait()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
