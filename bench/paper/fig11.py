"""Figure 11 of Llumnix (OSDI'24): serving performance of 16 LLaMA-7B/A10 instances under
generated power-law workloads and two real traces; llumnix vs INFaaS++ vs round-robin.

    python bench/paper/fig11.py            # runs what is missing, then writes the table + plot
    python bench/paper/fig11.py --report   # only rebuild paper_fig11.md/.png from the JSON

Lengths: the Llumnix artifact's generator (``artifact-zipf``: zipf over ranks 1..2·mean−1 with
alpha 2.0/1.5/1.15 for means 128/256/512, rescaled to the mean, capped at 6,144).
Rates: the paper's ends (128-128 at 32 and 36, 256-256 at 7.4 and 7.8, 512-512 at 2.6 and 3.0,
128-512 at 4.1 and 4.3, 512-128 at 10 and 18 req/s), plus the paper's top rate × 1.12 for each
generated workload: our 16 simulated A10s saturate 128-128 near 40 req/s, ~12% above the
paper's top rate, so ×1.12 is the same relative load as the paper's top rate on its testbed.
ShareGPT (Poisson) at 20 and 26 req/s and Azure conv (its recorded arrivals, rescaled) at 5.5
(its own rate) and 10 req/s. 10,000 requests per point for 128-128 (as the paper), 5,000
for the others (CPU time).
"""

from __future__ import annotations

import argparse
import json
import sys

from common import RESULTS, md_table, ms, ratio, run_points

POLICIES = ("llumnix", "infaas++", "round-robin")
TRACES = [  # (label, trace, arrival, rates, requests per point)
    ("128-128", "artifact-zipf:128-128", "poisson", (32, 36, 40), 10000),
    ("256-256", "artifact-zipf:256-256", "poisson", (7.4, 7.8, 8.7), 5000),
    ("512-512", "artifact-zipf:512-512", "poisson", (2.6, 3.0, 3.4), 5000),
    ("128-512", "artifact-zipf:128-512", "poisson", (4.1, 4.3, 4.8), 5000),
    ("512-128", "artifact-zipf:512-128", "poisson", (10, 18, 20), 5000),
    ("ShareGPT", "sharegpt", "poisson", (20, 26), 5000),
    ("Azure conv", "azure", "trace", (5.5, 10), 5000),
]
# rates the paper itself ran (the others are ours: paper top × 1.12, or trace rates)
PAPER_RATES = {"128-128": (32, 36), "256-256": (7.4, 7.8), "512-512": (2.6, 3.0),
               "128-512": (4.1, 4.3), "512-128": (10, 18)}
OUT = RESULTS / "paper_fig11.json"
# The paper's headline numbers for Figure 11 (llumnix vs INFaaS++, best case over all points).
PAPER = {"p99_prefill": 14.8, "mean_prefill": 7.7, "p99_decode": 2.0}


def points(scale: float = 1.0) -> list[dict]:
    pts = []
    for label, trace, arrival, rates, n in TRACES:
        requests = int(n * scale)
        for rate in rates:
            for pol in POLICIES:
                pts.append({"key": f"{label}@{rate}/{pol}", "trace": trace, "arrival": arrival,
                            "rate": float(rate), "policy": pol, "requests": requests,
                            "instances": 16, "profile": "llama-7b-a10", "seed": 1})
    return pts


def report(res: dict) -> str:
    rows, ratios_all = [], {k: [] for k in PAPER}
    for label, _, _, rates, _ in TRACES:
        for rate in rates:
            r = {p: res.get(f"{label}@{rate}/{p}") for p in POLICIES}
            if not all(r.values()):
                continue
            m = {p: r[p]["metrics"] for p in POLICIES}
            lm, im = m["llumnix"], m["infaas++"]
            ratios = {"p99_prefill": (im["ttft"]["p99"], lm["ttft"]["p99"]),
                      "mean_prefill": (im["ttft"]["mean"], lm["ttft"]["mean"]),
                      "p99_decode": (im["decode_per_token"]["p99"], lm["decode_per_token"]["p99"])}
            for k, (a, b) in ratios.items():
                ratios_all[k].append((a / b, f"{label}@{rate}"))
            rows.append([label, rate] + [
                " / ".join(ms(m[p][key][stat]) for p in POLICIES)
                for key, stat in (("ttft", "p99"), ("ttft", "mean"), ("decode_per_token", "p99"),
                                  ("e2e", "mean"))
            ] + [ratio(*ratios["p99_prefill"]), ratio(*ratios["mean_prefill"]),
                 ratio(*ratios["p99_decode"]), str(lm["migrations"]),
                 f"{lm['preemptions']} / {im['preemptions']}"])
    head = ["trace", "req/s", "P99 prefill ms (L / I / RR)", "mean prefill ms", "P99 decode ms",
            "mean e2e ms", "P99 prefill I/L", "mean prefill I/L", "P99 decode I/L",
            "migrations (L)", "preemptions L / I"]
    srows = []
    for k, name in (("p99_prefill", "P99 prefill latency"), ("mean_prefill", "mean prefill latency"),
                    ("p99_decode", "P99 decode latency")):
        v = sorted(ratios_all[k])
        if not v:
            continue
        best, where = v[-1]
        at_paper = [(x, w) for x, w in v if _at_paper_rate(w)]
        pbest = f"{at_paper[-1][0]:.1f}x ({at_paper[-1][1]})" if at_paper else "-"
        med = v[len(v) // 2][0]
        worse = [w for x, w in v if x < 0.95]
        srows.append([name, f"{PAPER[k]}x", pbest, f"{best:.1f}x ({where})", f"{med:.1f}x",
                      f"{len(v) - len(worse)} / {len(v)}", ", ".join(worse) or "-"])
    summary = md_table(["llumnix vs INFaaS++", "paper: up to", "ours at the paper's rates: up to",
                        "ours, all points: up to (where)", "ours: median over points",
                        "points not worse", "points where worse"], srows)
    return summary + "\n\n" + md_table(head, rows)


def _at_paper_rate(where: str) -> bool:
    label, rate = where.rsplit("@", 1)
    return float(rate) in PAPER_RATES.get(label, ())


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("ttft", "p99", "P99 prefill (s)"), ("ttft", "mean", "mean prefill (s)"),
               ("decode_per_token", "p99", "P99 decode (s/token)"), ("e2e", "mean", "mean e2e (s)"))
    fig, axes = plt.subplots(len(metrics), len(TRACES), figsize=(3 * len(TRACES), 10))
    for col, (label, _, _, rates, _) in enumerate(TRACES):
        for row, (key, stat, name) in enumerate(metrics):
            ax = axes[row][col]
            for pol, marker in zip(POLICIES, "o^s"):
                xs = [r for r in rates if f"{label}@{r}/{pol}" in res]
                ys = [res[f"{label}@{r}/{pol}"]["metrics"][key][stat] for r in xs]
                ax.plot(xs, ys, marker=marker, label=pol)
            ax.set_yscale("log")
            if row == 0:
                ax.set_title(label)
            if col == 0:
                ax.set_ylabel(name)
            if row == len(metrics) - 1:
                ax.set_xlabel("req/s")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    p.add_argument("--scale", type=float, default=1.0, help="x the requests per point")
    a = p.parse_args(argv)
    res = json.loads(OUT.read_text()) if a.report else run_points(points(a.scale), OUT)
    text = report(res)
    (RESULTS / "paper_fig11.md").write_text(HEADER + text + "\n" + NOTES)
    plot(res, RESULTS / "paper_fig11.png")
    print(text)
    return 0


HEADER = """# Figure 11: 16 LLaMA-7B/A10 instances, llumnix (L) vs INFaaS++ (I) vs round-robin (RR)

Simulated with `llumnix-zmq sim` (profile llama-7b-a10, 862 blocks of 16 tokens per instance;
lengths from the Llumnix artifact's generator, `artifact-zipf`; 10,000 requests per point for
128-128, 5,000 for the others; seed 1); regenerate with `python bench/paper/fig11.py`
(`--report` rebuilds this page from paper_fig11.json). Ratios are INFaaS++ / llumnix (higher =
llumnix better). Rates: the paper's two ends per generated workload, plus the paper's top rate
× 1.12 (same relative load: our 128-128 saturates near 40 req/s, the paper's top is 36).

"""

NOTES = """
## Reading the numbers (ours vs the paper)

- Rerun after an engine fix: a chunked-prefill prompt is now admitted only when all of it fits
  in free KV blocks (as vLLM admits a waiting request). Before, a long prompt was admitted on
  its first chunk, found no blocks for its next chunk, preempted itself (recompute) and looped.
  That loop was the INFaaS++ "preemption storm" of the earlier table (512-512 at 3.0 req/s:
  8,890 preemptions, P99 prefill 609 s, 470x worse than llumnix, which had 0 preemptions
  there). With the fix INFaaS++ preempts 41 times there and its P99 prefill is 1.3 s,
  equal to llumnix's. The earlier headline ratios (up to 470x P99 prefill, 167x mean prefill,
  5x P99 decode) came from that simulator bug, not from llumnix.
- We do not reproduce the paper's prefill gains. At the paper's rates llumnix's P99 prefill is
  1.0–1.3x better than INFaaS++'s (paper: up to 14.8x) and its mean prefill 1.0–1.3x (paper:
  up to 7.7x); over all 19 points the best is 1.9x, mean prefill at 128-512 4.8 req/s. P99
  decode is close to the paper's: 1.1–1.9x better at the paper's rates (paper: up to 2x) and
  not worse at any point; llumnix preempts 0–2 times per run at the paper's rates, INFaaS++
  0–186 times.
- Why the prefill gap is small here: the paper's gains come from INFaaS++ hitting
  fragmentation and preemptions near its capacity. Our latency model has more capacity than
  the paper's testbed on these workloads (prefill has no fixed cost, b = 0 in the A10 profile,
  and prefill chunks share steps with decodes as in today's vLLM, where the paper's vLLM 0.1
  ran prefill-only steps), so the paper's rates are lighter load for us: INFaaS++ leaves at
  most 0.9% of the cluster's blocks fragmented (free on an instance whose head-of-line request
  does not fit them; llumnix ~0%) and long prompts wait little. At the × 1.12 points (the
  paper's top relative load) it is 0.8–2.1%, and llumnix's mean prefill is 1.2–1.9x better
  while its P99 prefill is 1.0x, or 0.7x at 128-512 4.8 req/s (0.86 s vs 0.57 s, with 1,229
  migrations).
- Past capacity (ShareGPT at 26 req/s, Azure conv at 10 req/s, almost twice its recorded rate)
  every policy queues: P99 prefill 33–75 s for all three, and llumnix is 1.1x and 0.8x
  (73 s vs 61 s) of INFaaS++.
- Migration pairing knows the size of what the source can send: a destination is paired only
  if its room (M − ΣV, less 2 blocks of growth) fits the source's smallest movable request,
  and the source picks among the requests that fit. At 128-128 40 req/s 1 of 139 migrations
  aborted (before this rule: 152 of 428).
"""

if __name__ == "__main__":
    sys.exit(main())
