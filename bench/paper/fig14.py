"""Figure 14 of Llumnix: auto-scaling between 1 and 16 LLaMA-7B/A10 instances on 512-512 (the
artifact's length generator, ``artifact-zipf``),
Poisson 2.0–3.0 req/s or Gamma CV 2–6 at 2.0 req/s; llumnix vs INFaaS++ (both scaled by the same
AutoScaler and thresholds; INFaaS++ cannot migrate, so a drained instance waits for its requests
to finish before it stops).

    python bench/paper/fig14.py [--report]

(a) equal thresholds (scale-out F < 10, scale-in F > 60, the PolicyConfig defaults): P99 and
mean prefill latency and the average number of instances.
(b) threshold sweep on Poisson 2.5 req/s: (scale-out, scale-in) from eager to lazy; cost
(average instances) against P99 prefill, and llumnix's cost saving against each INFaaS++ point,
taking llumnix's cheapest point with an equal or better P99 (no extrapolation).
Startup delay of a new instance 10 s, cooldown 10 s; runs start with 8 instances (from 1, the
ramp-up of the first minutes would dominate every P99).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from common import RESULTS, md_table, ms, run_points

OUT = RESULTS / "paper_fig14.json"
POLICIES = ("llumnix", "infaas++")
WORKLOADS = [("poisson", 1.0, 2.0), ("poisson", 1.0, 2.5), ("poisson", 1.0, 3.0),
             ("gamma", 2.0, 2.0), ("gamma", 4.0, 2.0), ("gamma", 6.0, 2.0)]
# (scale-out F, scale-in F), lazy to eager; the paper's default 10 / 60 in the middle
SWEEP = [(0.0, 40.0), (5.0, 50.0), (10.0, 60.0), (20.0, 70.0), (30.0, 80.0)]
SWEEP_LOAD = ("poisson", 1.0, 2.5)
PAPER = "up to 36% cost saving at equal P99 prefill latency"
START = 8  # instances at t=0 (a cold start from 1 would put the ramp-up into every P99)


def _wl(arrival, cv, rate) -> str:
    return f"{arrival}{'' if arrival == 'poisson' else f' cv{cv:g}'}@{rate:g}"


def _point(key, arrival, cv, rate, pol, requests, out_thr, in_thr) -> dict:
    return {"key": key, "trace": "artifact-zipf:512-512", "arrival": arrival, "cv": cv, "rate": rate,
            "policy": pol, "requests": requests, "instances": START, "autoscale_min": 1,
            "autoscale_max": 16, "scale_out_threshold": out_thr, "scale_in_threshold": in_thr,
            "startup_delay_s": 10.0, "scale_cooldown_s": 10.0, "seed": 1, "keep_timeline": True}


def points(requests: int) -> list[dict]:
    pts = [_point(f"{_wl(*w)}/{pol}", *w, pol, requests, 10.0, 60.0)
           for w in WORKLOADS for pol in POLICIES]
    for o, i in SWEEP:
        if (o, i) == (10.0, 60.0):
            continue  # same as the equal-threshold point
        pts += [_point(f"sweep {o:g},{i:g}/{pol}", *SWEEP_LOAD, pol, requests, o, i)
                for pol in POLICIES]
    return pts


def _sweep_key(o, i, pol) -> str:
    return f"{_wl(*SWEEP_LOAD)}/{pol}" if (o, i) == (10.0, 60.0) else f"sweep {o:g},{i:g}/{pol}"


def savings(res: dict) -> list[tuple]:
    """Per INFaaS++ sweep point: (thresholds, its P99, its average instances, the cheapest
    llumnix sweep point whose P99 is at least as good (P99, average instances), saving).
    Conservative: llumnix is compared at equal-or-better P99, never extrapolated."""
    pts = [(res[_sweep_key(o, i, "llumnix")]["metrics"]["ttft"]["p99"],
            res[_sweep_key(o, i, "llumnix")]["metrics"]["avg_instances"])
           for o, i in SWEEP if _sweep_key(o, i, "llumnix") in res]
    out = []
    for o, i in SWEEP:
        r = res.get(_sweep_key(o, i, "infaas++"))
        if r is None:
            continue
        p99, avg = r["metrics"]["ttft"]["p99"], r["metrics"]["avg_instances"]
        ok = [p for p in pts if p[0] <= p99]
        if ok:
            lp, lc = min(ok, key=lambda p: p[1])
            out.append(((o, i), p99, avg, lp, lc, 1 - lc / avg))
    return out


def report(res: dict) -> str:
    rows = []
    for w in WORKLOADS:
        r = {p: res.get(f"{_wl(*w)}/{p}") for p in POLICIES}
        if not all(r.values()):
            continue
        m = {p: r[p]["metrics"] for p in POLICIES}
        save = 1 - m["llumnix"]["avg_instances"] / m["infaas++"]["avg_instances"]
        rows.append([_wl(*w)] + [" / ".join(ms(m[p]["ttft"][s]) for p in POLICIES)
                                 for s in ("p99", "mean")]
                    + [" / ".join(f"{m[p]['avg_instances']:.2f}" for p in POLICIES),
                       f"{save * 100:.0f}%", str(m["llumnix"]["migrations"])])
    a = md_table(["workload (req/s)", "P99 prefill ms (L / I)", "mean prefill ms (L / I)",
                  "avg instances (L / I)", "L saves", "L migrations"], rows)
    srows = []
    for o, i in SWEEP:
        r = {p: res.get(_sweep_key(o, i, p)) for p in POLICIES}
        if all(r.values()):
            srows.append([f"{o:g} / {i:g}"] + [
                f"{ms(r[p]['metrics']['ttft']['p99'])} ms @ {r[p]['metrics']['avg_instances']:.2f}"
                for p in POLICIES])
    b = md_table(["scale-out / scale-in F", "llumnix P99 prefill @ avg instances",
                  "INFaaS++ P99 prefill @ avg instances"], srows)
    sv = savings(res)
    c = md_table(["INFaaS++ thresholds", "INFaaS++ P99 prefill", "INFaaS++ avg instances",
                  "cheapest llumnix point with P99 <= that", "saving"],
                 [[f"{t[0]:g} / {t[1]:g}", f"{ms(p)} ms", f"{avg:.2f}",
                   f"{lc:.2f} instances (P99 {ms(lp)} ms)", f"{s * 100:.0f}%"]
                  for t, p, avg, lp, lc, s in sv])
    best = max((s for *_, s in sv), default=None)
    head = (f"Paper: {PAPER}. Ours: best saving at equal or better P99 prefill "
            f"{'-' if best is None else f'{best * 100:.0f}%'}.")
    return "\n\n".join([head, "## (a) equal thresholds (10 / 60)", a,
                        f"## (b) threshold sweep, {_wl(*SWEEP_LOAD)}", b,
                        "## cost at equal P99 prefill", c])


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    labels = [_wl(*w) for w in WORKLOADS]
    x = np.arange(len(labels))
    for k, pol in enumerate(POLICIES):
        p99 = [res.get(f"{lab}/{pol}", {}).get("metrics", {}).get("ttft", {}).get("p99") or 0
               for lab in labels]
        avg = [res.get(f"{lab}/{pol}", {}).get("metrics", {}).get("avg_instances") or 0
               for lab in labels]
        axes[0].bar(x + 0.4 * k, p99, 0.4, label=pol)
        axes[1].bar(x + 0.4 * k, avg, 0.4, label=pol)
        pts = [(res[_sweep_key(o, i, pol)]["metrics"]["avg_instances"],
                res[_sweep_key(o, i, pol)]["metrics"]["ttft"]["p99"])
               for o, i in SWEEP if _sweep_key(o, i, pol) in res]
        pts.sort()
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o^"[k], label=pol)
    for ax, title in zip(axes[:2], ("P99 prefill (s)", "average instances")):
        ax.set_xticks(x + 0.2, labels, rotation=30, fontsize=7)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[2].set_xlabel("average instances (cost)")
    axes[2].set_ylabel("P99 prefill (s)")
    axes[2].set_yscale("log")
    axes[2].set_title(f"threshold sweep, {_wl(*SWEEP_LOAD)}")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--report", action="store_true")
    p.add_argument("--requests", type=int, default=5000)
    a = p.parse_args(argv)
    res = json.loads(OUT.read_text()) if a.report else run_points(points(a.requests), OUT)
    text = report(res)
    (RESULTS / "paper_fig14.md").write_text(HEADER + text + "\n" + NOTES)
    plot(res, RESULTS / "paper_fig14.png")
    print(text)
    return 0


HEADER = """# Figure 14: auto-scaling (1–16 LLaMA-7B/A10, 512-512), llumnix (L) vs INFaaS++ (I)

Simulated, 5,000 requests per point (the paper: 10,000), seed 1, startup delay 10 s, cooldown
10 s, starting from 8 instances; cost = instance-seconds / makespan (average instances, startup
included). Lengths from the artifact's generator. Regenerate with `python bench/paper/fig14.py`
(`--report` rebuilds this page from paper_fig14.json).

"""

NOTES = """
## Reading the numbers

- Not met: our best saving at equal or better P99 prefill is well below the paper's 36%.
  Llumnix is cheaper at every equal-threshold point (0–23% fewer instances: a scaled-in
  instance drains by migration in about a second, where INFaaS++'s waits minutes for its long
  512-512 requests and blocks the next scale-in meanwhile), but at light load (Poisson 2–2.5,
  Gamma CV 2) it pays for it with a worse P99 prefill (6–10 s vs 1.4–1.7 s). Our reading, not
  yet verified by a trace of the scaling events: llumnix sits at the lower edge of the band,
  so the next burst needs a scale-out and waits out the 10 s startup delay.
- INFaaS++'s P99 is bimodal (1.4–1.8 s, or 100–600 s once a preemption storm starts), so
  the saving at equal P99 jumps from point to point (1–20%); the comparison takes llumnix's
  cheapest point with an equal or better P99, never extrapolated.
- Lengths follow the Llumnix artifact's generator (`artifact-zipf:512-512`); the sweep keeps
  the band 40–50 wide and moves it from lazy (0 / 40) to eager (30 / 80), for both policies.
"""

if __name__ == "__main__":
    sys.exit(main())
