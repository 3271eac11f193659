"""Figure 11 of Llumnix (OSDI'24): serving performance of 16 LLaMA-7B/A10 instances under
generated power-law workloads and two real traces; llumnix vs INFaaS++ vs round-robin.

    python bench/paper/fig11.py            # runs what is missing, then writes the table + plot
    python bench/paper/fig11.py --report   # only rebuild paper_fig11.md/.png from the JSON

Rates: the paper's (128-128 at 32–36, 256-256 at 7.4–7.8, 512-512 at 2.6–3.0, 128-512 at
4.1–4.3, 512-128 at 10–18 req/s), plus one rate per workload near our model's capacity where it
differs from the paper's testbed: 22 and 27 req/s for 128-128 (ours saturates near 25), 10 for
256-256, 4.2 for 512-512 and 5.0 for 128-512 (ours has room left at the paper's rates);
Azure conv also at 5.5 req/s (its recorded rate) and 7.5; ShareGPT (Poisson) and Azure conv (its
recorded arrivals, rescaled) at rates near our cluster's capacity. 10,000 requests per point
for 128-128 and 512-128, 5,000 for the longer workloads (CPU time; the paper uses 10,000).
"""

from __future__ import annotations

import argparse
import json
import sys

from common import RESULTS, md_table, ms, ratio, run_points

POLICIES = ("llumnix", "infaas++", "round-robin")
TRACES = [  # (label, trace, arrival, rates, requests per point)
    ("128-128", "zipf:128-128", "poisson", (22, 27, 32, 36), 10000),
    ("256-256", "zipf:256-256", "poisson", (7.4, 7.6, 7.8, 10), 5000),
    ("512-512", "zipf:512-512", "poisson", (2.6, 2.8, 3.0, 4.2), 5000),
    ("128-512", "zipf:128-512", "poisson", (4.1, 4.2, 4.3, 5.0), 5000),
    ("512-128", "zipf:512-128", "poisson", (10, 14, 18), 10000),
    ("ShareGPT", "sharegpt", "poisson", (20, 26), 5000),
    ("Azure conv", "azure", "trace", (5.5, 7.5, 10, 13), 5000),
]
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
        med = v[len(v) // 2][0]
        worse = [w for x, w in v if x < 0.95]
        srows.append([name, f"{PAPER[k]}x", f"{best:.1f}x ({where})", f"{med:.1f}x",
                      f"{len(v) - len(worse)} / {len(v)}", ", ".join(worse) or "-"])
    summary = md_table(["llumnix vs INFaaS++", "paper: up to", "ours: up to (where)",
                        "ours: median over points", "points not worse", "points where worse"],
                       srows)
    return summary + "\n\n" + md_table(head, rows)


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

Simulated with `llumnix-zmq sim` (profile llama-7b-a10, 862 blocks of 16 tokens per instance,
10,000 requests per point for 128-128 and 512-128, 5,000 for the others, seed 1);
regenerate with `python bench/paper/fig11.py`.
Ratios are INFaaS++ / llumnix (higher = llumnix better).

"""

NOTES = """
## Reading the numbers (ours vs the paper)

- Where our model sits relative to capacity decides everything. llumnix's gains appear in the
  band just below saturation, where INFaaS++ falls into a preemption storm (vLLM-style
  recompute of the newest request when a growing one needs a block; e.g. 512-512 at 3.0 req/s:
  11,454 preemptions for INFaaS++, 233 for llumnix) while llumnix's de-fragmentation and
  load-balancing migrations keep the head-of-line requests admitted. There our ratios exceed
  the paper's (up to 609x P99 prefill, 8.5x P99 decode). Well below capacity every load-aware
  policy is equal (256-256 at 7.4, Azure at 5.5: 1.0x); far beyond it queues grow without bound
  and the ratios shrink to 1–3x (128-128 at 32–36) or invert (Azure conv at 13, 0.8x).
- Our calibrated A10 profile and the lead's bounded power-law generator do not put the paper's
  rates at the paper's relative load: 128-128 at 32–36 req/s is far past our capacity (~25
  req/s), while 256-256 at 7.4–7.8 and 512-512 at 2.6 still have room. The Llumnix artifact
  draws lengths from a zipf over ranks 1..2·mean (alpha 2.0/1.5/1.15 for means 128/256/512),
  rescaled to the mean and capped at 6,144; ours is a power law on 1..6,144 with the exponent
  solved for the mean — a different tail per mean. Hence the extra rates (22/27 for 128-128,
  10 for 256-256, 4.2 for 512-512, 5.0 for 128-512).
- The median ratio over all 25 points is 1.5x (P99 prefill), 1.3x (mean prefill) and 1.8x
  (P99 decode): llumnix is rarely worse, and where it is (P99 decode under deep overload, the
  prefill-bound Azure trace) the cause is migrations competing with an already saturated
  cluster (many attempts abort for lack of room on the destination: pairing does not know the
  size of the request the source will pick).
- The sim's prefill-only steps have no fixed cost (profile llama-7b-a10 has b = 0), so a short
  prompt on an idle instance gets its first token in well under a millisecond; this lowers
  every policy's TTFT at light load equally.
"""

if __name__ == "__main__":
    sys.exit(main())
