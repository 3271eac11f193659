"""Simulator speed: simulated seconds per wall second on this machine, for 16, 64, 256 and 1,024
instances with proportionally more load (128-128 at 22 req/s per 16 instances, Poisson, policy
llumnix with migration), over the first 60 s of virtual time; plus the issue's reference run
(10,000 requests on 16 instances at 34 req/s, to completion) and profiles of where the time
goes at 64, 256 and 1,024 instances.

    python bench/paper/sim_speed.py [--sizes 16,64,256,1024] [--window 60]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time

from common import RESULTS, md_table

from llumnix_zmq.sim import SimulationConfig, run_simulation

# where a function's time is charged (cumulative time of these entry points)
COMPONENTS = {
    "SimEngine.step": ("engine/sim/engine.py", "step"),
    "SimEngine.load (reports)": ("engine/sim/engine.py", "load"),
    "dispatch policy": ("scheduler/policy/dispatch.py", "dispatch"),
    "pairing policy": ("scheduler/policy/pairing.py", "pair_migrations"),
    "migrations (sim)": ("sim/migration.py", "_stage"),
    "metrics (sim)": ("sim/metrics.py", "on_deltas"),
}


PROFILED = ((64, 30.0), (256, 20.0), (1024, 10.0))  # (instances, virtual seconds profiled)


def cfg_for(n: int, window: float | None, requests: int | None = None, rate: float | None = None):
    rate = rate if rate is not None else 22.0 * n / 16
    requests = requests if requests is not None else int(rate * (window + 5))
    return SimulationConfig(instances=n, trace="zipf:128-128", rate=rate, requests=requests,
                            policy="llumnix", seed=1, max_sim_seconds=window, progress=False)


def measure(cfg) -> dict:
    t0 = time.perf_counter()
    res = run_simulation(cfg)
    wall = time.perf_counter() - t0
    return {"instances": cfg.instances, "rate": cfg.rate, "requests": cfg.requests,
            "finished": res["finished"], "sim_seconds": res["sim_seconds"],
            "wall_seconds": wall, "sim_speed": res["sim_seconds"] / wall,
            "events": res["events"], "events_per_wall_s": res["events"] / wall,
            "migrations": res["metrics"]["migrations"]}


def breakdown(cfg) -> dict:
    prof = cProfile.Profile()
    prof.enable()
    run_simulation(cfg)
    prof.disable()
    st = pstats.Stats(prof)
    total = max(v[3] for v in st.stats.values())  # cumulative time of the outermost call
    out = {}
    for name, (path, func) in COMPONENTS.items():
        cum = sum(v[3] for (f, _, fn), v in st.stats.items() if f.endswith(path) and fn == func)
        out[name] = cum / total
    out["other (event loop, reports, instance glue)"] = max(0.0, 1.0 - sum(out.values()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="16,64,256,1024")
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--no-reference", action="store_true")
    a = p.parse_args(argv)
    out = {"window_s": a.window, "scaling": [], "note": "One process on this 2-core machine "
           "(shared with other jobs; wall times are upper bounds)."}
    if not a.no_reference:
        ref = measure(cfg_for(16, None, requests=10000, rate=34.0))
        out["reference_10k_16inst_34rps"] = ref
        print("reference:", json.dumps(ref), flush=True)
    for n in (int(x) for x in a.sizes.split(",")):
        r = measure(cfg_for(n, a.window))
        out["scaling"].append(r)
        print(json.dumps(r), flush=True)
        (RESULTS / "sim_speed.json").write_text(json.dumps(out, indent=1) + "\n")
    out["profile"] = {str(n): breakdown(cfg_for(n, w)) for n, w in PROFILED}
    (RESULTS / "sim_speed.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "sim_speed.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    lines = ["# Simulator speed", ""]
    ref = out.get("reference_10k_16inst_34rps")
    if ref:
        lines += [f"Reference (`llumnix-zmq sim --instances 16 --trace zipf:128-128 --rate 34 "
                  f"--requests 10000 --policy llumnix`): {ref['sim_seconds']:.0f} simulated s in "
                  f"{ref['wall_seconds']:.1f} s wall ({ref['sim_speed']:.1f}x real time), "
                  f"{ref['events']} events.", ""]
    rows = [[r["instances"], f"{r['rate']:.0f}", r["finished"], f"{r['sim_seconds']:.0f}",
             f"{r['wall_seconds']:.1f}", f"{r['sim_speed']:.2f}",
             f"{r['sim_speed'] * r['instances']:.0f}", f"{r['events_per_wall_s']:.0f}"]
            for r in out["scaling"]]
    lines += [f"Scaling: 128-128 at 22 req/s per 16 instances (Poisson), llumnix with migration, "
              f"first {out['window_s']:.0f} s of virtual time.", "",
              md_table(["instances", "req/s", "finished", "sim s", "wall s", "sim s / wall s",
                        "instance-s / wall s", "events / wall s"], rows), ""]
    prof = out.get("profile")
    if prof:
        sizes = list(prof)
        lines += ["Where the time goes (cProfile, cumulative share of the run; the first "
                  + ", ".join(f"{w:g} s at {n}" for n, w in PROFILED) + " instances):", "",
                  md_table(["component"] + [f"{n} instances" for n in sizes],
                           [[k] + [f"{prof[n][k] * 100:.0f}%" for n in sizes]
                            for k in prof[sizes[0]]]), ""]
    lines += [out["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
