"""Figures 14 and 15 of Llumnix: auto-scaling between 1 and 16 LLaMA-7B/A10 instances on 512-512
(the artifact's length generator, ``artifact-zipf``), Poisson 2.0–3.0 req/s or Gamma CV 2–6 at
2.0 req/s; llumnix vs INFaaS++ (both scaled by the same AutoScaler and thresholds; INFaaS++
cannot migrate, so a drained instance waits for its requests to finish before it stops).

    python bench/paper/fig14.py [--report]

(a) Figure 14, equal thresholds (scale-out F_c < 10, scale-in F_c > 60, the PolicyConfig
defaults): P99 and mean prefill latency and the average number of instances.
(b) Figure 15, threshold sweep as the artifact runs it: Gamma CV 2 at 2.0 req/s, scale-out T and
scale-in T + 50 for T in 5, 10, 25, 45, 65, 85; cost (average instances) against P99 prefill,
and llumnix's cost saving against each INFaaS++ point, taking llumnix's cheapest point with an
equal or better P99 (no extrapolation).
Startup delay of a new instance 10 s, cooldown 10 s (the artifact's scaling interval); runs start
with 8 instances (from 1, the ramp-up of the first minutes would dominate every P99). Engines
without chunked prefill, as the artifact's vLLM 0.2: a prompt is admitted whole or waits at the
head of the queue (the fragmentation Llumnix's de-fragmentation attacks). With chunked prefill
our engine admits the first 4,096-token chunk of a longer prompt that cannot finish in the free
blocks, preempts it at the next chunk and re-admits it, step after step (tens of seconds).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from common import RESULTS, md_table, ms, ratio, run_points

OUT = RESULTS / "paper_fig14.json"
POLICIES = ("llumnix", "infaas++")
WORKLOADS = [("poisson", 1.0, 2.0), ("poisson", 1.0, 2.5), ("poisson", 1.0, 3.0),
             ("gamma", 2.0, 2.0), ("gamma", 4.0, 2.0), ("gamma", 6.0, 2.0)]
# (scale-out F, scale-in F), eager-to-launch to lazy: the artifact's T / T + 50 (its run.sh) plus
# the default 10 / 60
SWEEP = [(5.0, 55.0), (10.0, 60.0), (25.0, 75.0), (45.0, 95.0), (65.0, 115.0), (85.0, 135.0)]
SWEEP_LOAD = ("gamma", 2.0, 2.0)
PAPER14 = ("Fig. 14: P99 prefill up to 12.2x (Poisson) and 11x (Gamma) better, cost up to 16% "
           "(Poisson) and 18% (Gamma) lower")
PAPER = "Fig. 15: up to 36% cost saving at equal P99 prefill latency"
START = 8  # instances at t=0 (a cold start from 1 would put the ramp-up into every P99)


def _wl(arrival, cv, rate) -> str:
    return f"{arrival}{'' if arrival == 'poisson' else f' cv{cv:g}'}@{rate:g}"


def _point(key, arrival, cv, rate, pol, requests, out_thr, in_thr) -> dict:
    return {"key": key, "trace": "artifact-zipf:512-512", "arrival": arrival, "cv": cv, "rate": rate,
            "policy": pol, "requests": requests, "instances": START, "autoscale_min": 1,
            "autoscale_max": 16, "scale_out_threshold": out_thr, "scale_in_threshold": in_thr,
            "startup_delay_s": 10.0, "scale_cooldown_s": 10.0, "seed": 1, "chunked_prefill": False,
            "max_num_batched_tokens": 12800,  # the artifact's serving_exp config, as in Fig. 11
            "keep_timeline": True}


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
                    + [ratio(m["infaas++"]["ttft"]["p99"], m["llumnix"]["ttft"]["p99"]),
                       " / ".join(f"{m[p]['avg_instances']:.2f}" for p in POLICIES),
                       f"{save * 100:.0f}%", str(m["llumnix"]["migrations"]),
                       " / ".join(str(m[p]["preemptions"]) for p in POLICIES)])
    a = md_table(["workload (req/s)", "P99 prefill ms (L / I)", "mean prefill ms (L / I)",
                  "P99 I / L", "avg instances (L / I)", "L saves", "L migrations",
                  "preemptions (L / I)"], rows)
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
    head = (f"Paper: {PAPER14}; {PAPER}. Ours: best saving at equal or better P99 prefill "
            f"{'-' if best is None else f'{best * 100:.0f}%'}.")
    return "\n\n".join([head, "## paper vs ours", _claims(res, best),
                        "## (a) Figure 14: equal thresholds (10 / 60)", a,
                        f"## (b) Figure 15: threshold sweep, {_wl(*SWEEP_LOAD)}", b,
                        "## cost at equal P99 prefill", c])


def _claims(res: dict, best) -> str:
    """The paper's headline numbers next to ours (maxima over the same workloads)."""
    def agg(kind):
        p99, save = [], []
        for w in WORKLOADS:
            if w[0] != kind:
                continue
            r = {p: res.get(f"{_wl(*w)}/{p}") for p in POLICIES}
            if not all(r.values()):
                continue
            m = {p: r[p]["metrics"] for p in POLICIES}
            p99.append(m["infaas++"]["ttft"]["p99"] / m["llumnix"]["ttft"]["p99"])
            save.append(1 - m["llumnix"]["avg_instances"] / m["infaas++"]["avg_instances"])
        return p99, save

    rows = []
    for kind, label, paper_p99, paper_save in (("poisson", "Poisson 2–3 req/s", "12.2x", "16%"),
                                               ("gamma", "Gamma CV 2–6 @ 2", "11x", "18%")):
        p99, save = agg(kind)
        if p99:
            rows.append([f"P99 prefill, INFaaS++ / llumnix, {label} (best .. worst)",
                         f"up to {paper_p99}", f"{max(p99):.2f}x .. {min(p99):.2f}x"])
            rows.append([f"cost saving (average instances), {label}", f"up to {paper_save}",
                         f"{max(save) * 100:.0f}% .. {min(save) * 100:.0f}%"])
    rows.append(["cost saving at equal or better P99 prefill (Fig. 15 sweep)", "up to 36%",
                 "-" if best is None else f"up to {best * 100:.0f}%"])
    return md_table(["claim", "paper", "ours"], rows)


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


HEADER = """# Figures 14–15: auto-scaling (1–16 LLaMA-7B/A10, 512-512), llumnix (L) vs INFaaS++ (I)

Simulated, 5,000 requests per point (the paper: 10,000), seed 1, startup delay 10 s, cooldown
10 s (the artifact's scaling interval), starting from 8 instances; cost = instance-seconds /
makespan (average instances, startup included). Lengths from the artifact's generator; engines
as the artifact's serving_exp config (vLLM 0.2): no chunked prefill, 12,800 batched tokens per
step (as Fig. 11; before this session's rerun: 4,096). The scaler keeps the cluster's freeness F_c
(free blocks over requests, summed over instances as the artifact's avg_load) in the band and
drains an instance only if the others stay above the band's top without it. Regenerate with
`python bench/paper/fig14.py` (`--report` rebuilds this page from paper_fig14.json).

"""

NOTES = """
## Reading the numbers

- Not met. This run: llumnix's points rerun with long-prompt dispatch (a prompt of >= 512
  tokens goes where the fewest requests would wait for its prefill, among instances keeping
  F_d >= 10; scheduler/policy/dispatch.py). Cost saving at equal or better P99 prefill (Fig. 15
  sweep): up to 26% (was 20%; paper 36%); llumnix's sweep reaches the P99 floor at fewer
  instances (25 / 75: 1.31 s at 8.87, was 1.34 s at 8.86; 10 / 60: 1.46 s at 8.20, was 2.13 s).
  At equal thresholds it runs 7–15% fewer instances; Gamma CV 4 P99 prefill 2.6x better (was
  1.8x), CV 6 6.6x (was 7.8x); Poisson 0.80–0.94x (was 0.72–0.96x), Gamma CV 2 0.93x (was
  0.63x). How far 36% is (llumnix only, same workload, not in the tables): 15 / 65 gives
  1.37 s at 8.39 instances; below the sweep, 0 / 50 gives 7.5 s at 7.83 and −5 / 45 11.8 s at
  7.72. A 36% saving against INFaaS++'s 12.0-instance point needs P99 <= 1.32 s at <= 7.68
  instances, where this load already queues for seconds: the saving at equal P99 is set by
  how many instances INFaaS++'s costliest threshold keeps while its P99 stays on the same
  floor (1.31–1.47 s at every threshold), not by a P99 that more instances would buy down.
- The run before it: every point rerun on the recalibrated A10 profile (a fixed 5.6 ms per
  step; weights and KV read at one bandwidth, see engine/sim/profiles.py): steps at the high
  KV occupancy of 512-512 are now ~10% shorter, at low occupancy ~20% longer. The cost saving
  at equal P99 prefill (Fig. 15 sweep) is up to 20% (was 15%; paper 36%). At equal thresholds
  llumnix runs 8–15% fewer instances (was 3–15%); under bursty load its P99 prefill is 7.8x
  better than INFaaS++'s at Gamma CV 6 and 1.8x at CV 4 (was 5.1x and 5.9x; paper up to 11x).
  Under Poisson and Gamma CV 2 both policies' P99 prefill sits on the same floor, the prefill
  time of the longest prompts (artifact-zipf: 1% of prompts exceed 5,460 tokens, ~1.2 s of
  prefill each), and llumnix's is 0.6–1.0x of INFaaS++'s while it runs 8–11% fewer instances.
- Earlier: llumnix's points rerun after a freeness fix (ΣV counts the blocks held
  for an incoming migration): saving at equal P99 15%, CV 4–6 P99 5.1–5.9x.
- Under Poisson arrivals the paper's 12.2x is out of any policy's reach on this model: if every
  prompt were prefilled alone the moment it arrived, the P99 prefill of these 512-512 lengths
  would be 1.17 s, and INFaaS++ measures 1.29–1.33 s (Gamma CV 2: 1.35 s), so a perfect
  scheduler could win at most 1.10–1.15x there (the same bound as Fig. 11's table). Only
  bursty arrivals leave room: INFaaS++ at CV 4 and 6 measures 5.5 s and 101 s.
- Earlier still (on the artifact's 12,800 batched tokens per step, was 4,096) moved the
  saving at equal P99 from 3% to 15% and the CV 4–6 P99 ratio from 1.8–2.3x to 6.5–6.7x.
- Where llumnix's P99 is worse (Poisson, Gamma CV 2: 1.3–2.1 s vs 1.3 s) it serves the same
  load with fewer instances (longer prefill steps beside more decodes) and its first minute
  scales in faster (8 instances down to 4 before the load ramps up; INFaaS++'s drains wait for
  their requests and hold it higher).
- What changed since the first run (P99 6–10 s for llumnix at light load), found with a trace
  of poisson@2.5: (1) the scaler averaged per-instance F clipped to ±120, so a few idle
  instances kept the mean above 60 while the rest were full; it scaled 8 → 3 instances in the
  first 50 s, then launched one instance at a time (a pending launch blocked the next), and 29
  of the 50 slowest requests queued in that window. It now scales on the aggregate F_c (the
  artifact's avg_load), drains only if F_c stays above the band without the victim, launches
  as many instances at once as F_c needs, and cancels a drain instead of launching. (2) Our
  engine's chunked prefill livelocks on a prompt larger than the free blocks (a 5,826-token
  prompt re-prefilled its first 4,096 tokens and preempted itself for 80 s, invisible to the
  scheduler, which saw it running); the artifact's vLLM 0.2 had no chunked prefill, so these
  runs turn it off.
- Lengths follow the Llumnix artifact's generator (`artifact-zipf:512-512`); the sweep is the
  artifact's (T / T + 50 on Gamma CV 2 at 2 req/s), for both policies.
"""

if __name__ == "__main__":
    sys.exit(main())
