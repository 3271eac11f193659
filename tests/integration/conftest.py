"""Fixtures that run real clusters (scheduler + workers + frontend processes) on loopback."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from llumnix_zmq.engine.sim import pseudo_tokens
from llumnix_zmq.launch.local import ClusterSpec, LocalCluster
from llumnix_zmq.tokenizer import ByteTokenizer

ADMIN_KEY = "test-admin-key"
TOK = ByteTokenizer()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_text(prompt: str, max_tokens: int, seed=None, chat: bool = False) -> str:
    if chat:
        ids = TOK.encode(TOK.apply_chat_template([{"role": "user", "content": prompt}]),
                         add_bos=False)
    else:
        ids = TOK.encode(prompt)
    return TOK.decode(pseudo_tokens(ids, seed, 0, max_tokens))


def admin_get(cluster: LocalCluster, path: str) -> dict:
    req = urllib.request.Request(cluster.base_url + path,
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    return last


def blocks_used(cluster: LocalCluster) -> dict[str, int]:
    return {i["id"]: i["blocks_used"] for i in admin_get(cluster, "/admin/instances")["instances"]}


def start_cluster(tmp_path, autoscale: tuple[int, int] | None = None,
                  **overrides) -> LocalCluster:
    spec = ClusterSpec(port=free_port(), admin_key=ADMIN_KEY, log_dir=str(tmp_path / "logs"),
                       **overrides)
    cluster = LocalCluster(spec)
    if autoscale:
        spec.scheduler_args = [*spec.scheduler_args, "--autoscale-min", str(autoscale[0]),
                               "--autoscale-max", str(autoscale[1]), "--launcher", "local",
                               "--launch-template", cluster.worker_template()]
    cluster.start()
    if spec.instances and not cluster.wait_ready(60):
        cluster.stop()
        logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
        raise AssertionError(f"cluster not ready\n{logs}")
    return cluster


@pytest.fixture(scope="module")
def sim_cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("mesh"), instances=2, time_scale=0.2)
    yield cluster
    cluster.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of every child's log (scheduler, workers, frontend) to the
    report, so a failure seen only in CI says what the processes saw."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    dirs = [Path(v.spec.log_dir) for v in item.funcargs.values()  # clusters of any fixture
            if getattr(getattr(v, "spec", None), "log_dir", "")]
    tmp = item.funcargs.get("tmp_path")
    paths = [p for d in dirs for p in d.glob("*.log")]
    if tmp is not None:
        paths += tmp.glob("**/logs/*.log")
    for path in sorted(set(paths)):
        try:
            lines = path.read_text(errors="replace").splitlines()[-40:]
        except OSError:
            continue
        report.sections.append((f"log {path.name}", "\n".join(lines)))
