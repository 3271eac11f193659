"""launch/launchers.LocalProcessLauncher with stand-in children (shell scripts in place of the
Python interpreter): launch ids, reaping, and close() stopping every child, killing one that
ignores SIGTERM."""

from __future__ import annotations

import signal
import stat
import time

from llumnix_zmq.launch.launchers import LocalProcessLauncher


def script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_launch_names_children_in_order_and_reap_reports_those_that_exited(tmp_path):
    quick = LocalProcessLauncher([], prefix="w", python=script(tmp_path, "quick", "exit 3"))
    assert [quick.launch(), quick.launch()] == ["w-1", "w-2"]
    for proc in quick.procs.values():
        proc.wait(10)
    assert sorted(quick.reap()) == ["w-1", "w-2"]
    assert quick.reap() == [] and quick.procs == {}


def test_close_stops_every_child_and_kills_one_that_ignores_sigterm(tmp_path):
    polite = LocalProcessLauncher([], python=script(tmp_path, "polite", "exec sleep 30"))
    ready = tmp_path / "ready"  # SIGTERM ignored from here on (and across the exec)
    stubborn = script(tmp_path, "stubborn", f"trap '' TERM\n: > {ready}\nexec sleep 30")
    polite.launch()
    polite.python = stubborn
    polite.launch()
    procs = dict(polite.procs)
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists()
    polite.close(timeout=0.5)
    assert polite.procs == {}
    assert procs["auto-1"].returncode == -signal.SIGTERM
    assert procs["auto-2"].returncode == -signal.SIGKILL
