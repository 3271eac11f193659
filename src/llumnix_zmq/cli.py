"""``llumnix-zmq``: one entry point, a subcommand per role.

    llumnix-zmq scheduler|worker|frontend [flags]   one service (flags > env > --config TOML)
    llumnix-zmq up --engine sim --instances N --port P   a whole local cluster
    llumnix-zmq migrate --source A --destination B   an operator's migration order
    llumnix-zmq instances                           list instances (admin endpoint)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request

from .common.aio import run_service, setup_logging
from .config import add_flags, load_config

log = logging.getLogger("llumnix_zmq")


def _service(role: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"llumnix-zmq {role}")
    from .config import SECTIONS

    add_flags(parser, SECTIONS[role])
    cfg = load_config(role, parser.parse_args(argv))
    setup_logging(cfg.log_level, role)
    if role == "scheduler":
        from .scheduler.main import serve
    elif role == "worker":
        from .worker.main import serve
    else:
        from .frontend.main import serve
    run_service(lambda stop: serve(cfg, stop))
    return 0


def _up(argv: list[str]) -> int:
    from .launch.local import ClusterSpec, LocalCluster

    p = argparse.ArgumentParser(prog="llumnix-zmq up",
                                description="start a scheduler, N workers and a frontend")
    p.add_argument("--engine", default="sim", choices=["sim", "torch", "vllm"])
    p.add_argument("--model", default=None, help="torch: tiny | smollm2 | PATH (default smollm2); vllm: tiny | PATH (default tiny)")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--profile", default="llama-7b-a10", help="sim latency profile")
    p.add_argument("--time-scale", type=float, default=1.0, help="sim: step time multiplier")
    p.add_argument("--dispatch-policy", default="llumnix")
    p.add_argument("--no-migration", action="store_true")
    p.add_argument("--autoscale", default="", metavar="MIN,MAX",
                   help="auto-scale between MIN and MAX instances (starts MIN)")
    p.add_argument("--admin-key", default=os.environ.get("LLUMNIX_ADMIN_KEY", ""))
    p.add_argument("--api-key", action="append", default=[])
    p.add_argument("--transport", default="ipc", choices=["ipc", "tcp"])
    p.add_argument("--curve-dir", default="",
                   help="authenticate every inter-service socket with CURVE keys from this "
                        "directory (made if missing)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-dir", default="")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--worker-arg", action="append", default=[],
                   help="extra flag for every worker, e.g. --worker-arg=--num-blocks=512")
    p.add_argument("--scheduler-arg", action="append", default=[])
    p.add_argument("--frontend-arg", action="append", default=[])
    a = p.parse_args(argv)
    setup_logging(a.log_level, "up")
    model = a.model or {"torch": "smollm2", "vllm": "tiny"}.get(a.engine, "sim")
    if a.engine == "torch" and not any("num-threads" in w for w in a.worker_arg):
        # one engine per core share: torch's default would oversubscribe the CPU
        a.worker_arg.append(f"--num-threads={max(1, (os.cpu_count() or 1) // a.instances)}")
    if a.autoscale:
        lo, hi = (int(x) for x in a.autoscale.split(","))
        a.instances = lo
        a.scheduler_arg += ["--autoscale-min", str(lo), "--autoscale-max", str(hi),
                            "--launcher", "local"]
    spec = ClusterSpec(engine=a.engine, model=model, instances=a.instances, host=a.host,
                       port=a.port, profile=a.profile, time_scale=a.time_scale,
                       dispatch_policy=a.dispatch_policy, enable_migration=not a.no_migration,
                       admin_key=a.admin_key, api_keys=a.api_key, log_level=a.log_level,
                       transport=a.transport, worker_args=a.worker_arg,
                       scheduler_args=a.scheduler_arg, frontend_args=a.frontend_arg,
                       log_dir=a.log_dir, curve_dir=a.curve_dir)
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    cluster = LocalCluster(spec)
    if a.autoscale:
        spec.scheduler_args += ["--launch-template", cluster.worker_template()]
        spec.frontend_args += ["--expect-instances", str(max(1, lo))]
    cluster.start()
    try:
        if not cluster.wait_ready(a.ready_timeout):
            log.error("cluster did not become ready in %.0fs", a.ready_timeout)
            return 1
        print(f"llumnix-zmq ready: {cluster.base_url}/v1 ({a.instances} x {a.engine}/{model}); "
              "Ctrl-C stops", flush=True)
        while not stopping:
            cluster.reap()
            if not any(c.alive for c in cluster.children):
                log.error("every process exited")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        log.info("stopping the cluster")
        cluster.stop()


def _admin(argv: list[str], command: str) -> int:
    p = argparse.ArgumentParser(prog=f"llumnix-zmq {command}")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--admin-key", default=os.environ.get("LLUMNIX_ADMIN_KEY", ""))
    if command == "migrate":
        p.add_argument("--destination", required=True)
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--request-id")
        g.add_argument("--source")
        p.add_argument("--num-requests", type=int, default=1)
    a = p.parse_args(argv)
    headers = {"Authorization": f"Bearer {a.admin_key}", "Content-Type": "application/json"}
    if command == "migrate":
        body = {"destination": a.destination}
        if a.request_id:
            body["request_id"] = a.request_id
        else:
            body.update(source=a.source, num_requests=a.num_requests)
        req = urllib.request.Request(a.url + "/admin/migrate", json.dumps(body).encode(), headers)
    else:
        req = urllib.request.Request(a.url + "/admin/instances", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            print(json.dumps(json.loads(resp.read()), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"), file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("scheduler", "worker", "frontend", "up", "migrate", "instances", "sim", "keys")
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("scheduler", "worker", "frontend"):
        return _service(cmd, rest)
    if cmd == "up":
        return _up(rest)
    if cmd in ("migrate", "instances"):
        return _admin(rest, cmd)
    if cmd == "sim":
        from .sim.cli import main as sim_main

        return sim_main(rest)
    from .security.keys import main as keys_main

    return keys_main(rest)


if __name__ == "__main__":
    sys.exit(main())
