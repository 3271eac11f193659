"""bench/mesh_floor.py: a short run of the skeleton mesh (worker and frontend processes, ZeroMQ
over ipc, HTTP on 127.0.0.1) completes every request and writes its per-segment results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# registered as "mesh_floor": its worker and frontend run in spawned processes, which import
# the module by that name (the module puts bench/ on sys.path, which the children inherit)
spec = importlib.util.spec_from_file_location("mesh_floor", REPO / "bench" / "mesh_floor.py")
mesh_floor = importlib.util.module_from_spec(spec)
sys.modules["mesh_floor"] = mesh_floor
spec.loader.exec_module(mesh_floor)


def test_a_short_loaded_run_completes_every_request_and_records_each_segment(tmp_path):
    out = tmp_path / "mesh_floor.json"
    rc = mesh_floor.main(["--requests", "20", "--rate", "200", "--step-ms", "10",
                          "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0
    assert (res["completed"], res["errors"]) == (20, 0)
    assert set(res["segments_ms"]) == {name for name, _, _ in mesh_floor.SEGMENTS}
    assert all(s["n"] == 20 for s in res["segments_ms"].values())
    assert sorted(res["per_request_ms"]["index"]) == list(range(20))
    assert all(v > 0 for v in res["per_request_ms"]["outside_worker"])
