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
(its own rate) and 10 req/s. 10,000 requests per point, as the paper (~20 min on 2 cores).

Testbed: the engines run as the artifact's vLLM 0.1/0.2 did (its serving_exp config): no chunked
prefill (a prompt is prefilled whole; decodes wait for it) and max_num_batched_tokens 12,800.
Migration thresholds per trace from the artifact's run.sh (out = in = T: 3 for 128-128, 512-512,
512-128 and the real traces, 10 for 256-256 and 128-512).
"""

from __future__ import annotations

import argparse
import json
import sys

from common import RESULTS, md_table, ms, ratio, run_points

POLICIES = ("llumnix", "infaas++", "round-robin")
# the artifact's engine settings (artifact/63_serving_performance/config/serving_exp)
TESTBED = {"chunked_prefill": False, "max_num_batched_tokens": 12800}
# the artifact's migrate threshold per trace (run.sh: --migrate-out/in-threshold T T)
THRESHOLD = {"256-256": 10.0, "128-512": 10.0}
TRACES = [  # (label, trace, arrival, rates, requests per point)
    ("128-128", "artifact-zipf:128-128", "poisson", (32, 36, 40), 10000),
    ("256-256", "artifact-zipf:256-256", "poisson", (7.4, 7.8, 8.7), 10000),
    ("512-512", "artifact-zipf:512-512", "poisson", (2.6, 3.0, 3.4), 10000),
    ("128-512", "artifact-zipf:128-512", "poisson", (4.1, 4.3, 4.8), 10000),
    ("512-128", "artifact-zipf:512-128", "poisson", (10, 18, 20), 10000),
    ("ShareGPT", "sharegpt", "poisson", (20, 26), 10000),
    ("Azure conv", "azure", "trace", (5.5, 10), 10000),
]
# rates the paper itself ran (the others are ours: paper top × 1.12, or trace rates)
PAPER_RATES = {"128-128": (32, 36), "256-256": (7.4, 7.8), "512-512": (2.6, 3.0),
               "128-512": (4.1, 4.3), "512-128": (10, 18)}
OUT = RESULTS / "paper_fig11.json"
# The paper's headline numbers for Figure 11 (llumnix vs INFaaS++, best case over all points).
PAPER = {"p99_prefill": 14.8, "mean_prefill": 7.7, "p99_decode": 2.0}


def points(scale: float = 1.0, only: str | None = None) -> list[dict]:
    pts = []
    for label, trace, arrival, rates, n in TRACES:
        if only is not None and label != only:
            continue
        requests = int(n * scale)
        t = THRESHOLD.get(label, 3.0)
        for rate in rates:
            for pol in POLICIES:
                pts.append({"key": f"{label}@{rate}/{pol}", "trace": trace, "arrival": arrival,
                            "rate": float(rate), "policy": pol, "requests": requests,
                            "instances": 16, "profile": "llama-7b-a10", "seed": 1,
                            "migrate_out_threshold": t, "migrate_in_threshold": t, **TESTBED})
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
                 ratio(*ratios["p99_decode"]), _long(lm, im), str(lm["migrations"]),
                 f"{lm['preemptions']} / {im['preemptions']}",
                 f"{_frag(lm)} / {_frag(im)}"])
    head = ["trace", "req/s", "P99 prefill ms (L / I / RR)", "mean prefill ms", "P99 decode ms",
            "mean e2e ms", "P99 prefill I/L", "mean prefill I/L", "P99 decode I/L",
            "longest 1% prompts: mean prefill ms L / I", "migrations (L)", "preemptions L / I",
            "fragmented blocks % L / I"]
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


def _long(lm: dict, im: dict) -> str:
    lt, it = lm.get("ttft_long_prompts"), im.get("ttft_long_prompts")
    if not lt or not it or lt["mean"] is None:
        return "-"
    return f"{ms(lt['mean'])} / {ms(it['mean'])} ({it['mean'] / lt['mean']:.1f}x)"


def _frag(m: dict) -> str:
    f = m["fragmentation"]["fraction"]
    return "-" if f is None else f"{100 * f:.2f}"


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
    p.add_argument("--only", help="run only this trace label (e.g. 512-512), then report")
    a = p.parse_args(argv)
    res = json.loads(OUT.read_text()) if a.report else run_points(points(a.scale, a.only), OUT)
    text = report(res)
    (RESULTS / "paper_fig11.md").write_text(HEADER + text + "\n" + NOTES)
    plot(res, RESULTS / "paper_fig11.png")
    print(text)
    return 0


HEADER = """# Figure 11: 16 LLaMA-7B/A10 instances, llumnix (L) vs INFaaS++ (I) vs round-robin (RR)

Simulated with `llumnix-zmq sim` (profile llama-7b-a10, 862 blocks of 16 tokens per instance;
lengths from the Llumnix artifact's generator, `artifact-zipf`; 10,000 requests per point, as
the paper; seed 1); regenerate with `python bench/paper/fig11.py`
(`--report` rebuilds this page from paper_fig11.json). Ratios are INFaaS++ / llumnix (higher =
llumnix better). Rates: the paper's two ends per generated workload, plus the paper's top rate
× 1.12 (same relative load: our 128-128 saturates near 40 req/s, the paper's top is 36).
Testbed as the artifact's (its serving_exp config, vLLM 0.1/0.2): engines without chunked
prefill (a prompt is prefilled whole, decodes wait for it) and max_num_batched_tokens 12,800;
migration thresholds per trace from its run.sh (out = in = 10 for 256-256 and 128-512, 3 for the
others). "Longest 1% prompts" is the mean prefill latency of the requests whose prompt is in the
longest 1%; "fragmented blocks" the free blocks of instances whose head-of-line request does not
fit them, as a share of all blocks (time average).

"""

NOTES = """
## Reading the numbers (ours vs the paper)

- This run: llumnix's points rerun after a freeness fix (ΣV now counts the blocks an instance
  holds for no running request, i.e. those pre-allocated for an incoming migration: a
  destination mid-import no longer looks freer than it is to dispatch); INFaaS++ and
  round-robin never migrate, so their points are unchanged. At the paper's rates the headline
  ratios do not move (P99 prefill up to 1.2x, mean prefill up to 1.6x, P99 decode up to 1.8x,
  was 1.7x); 128-128@36 P99 prefill 647 → 589 ms, 128-512@4.3 670 → 648 ms (mean 119 → 130
  ms). Past capacity the points are chaotic (queues build for the whole run) and moved both
  ways: 128-512@4.8 50.2 → 19.4 s (now 2.5x better than INFaaS++), 512-512@3.4 18.9 → 35.6 s
  (0.4x), ShareGPT@26 63.8 → 72.8 s (0.9x).
- The run before it: 10,000 requests per point instead of 5,000: the top rates then ran long
  enough for their queues to build (512-512 at 3.4 req/s and 128-512 at 4.8 are past capacity,
  not at ×1.12 of it as 5,000 requests suggested).
- The testbed engine (above) since the run before the last. Before it, Fig. 11 ran today's vLLM
  behaviour: chunked prefill sharing steps with decodes, 4,096 batched tokens, thresholds
  out 3 / in 10 for every trace. Headline ratios INFaaS++ / llumnix, before → after (both at
  5,000 requests per point, 128-128 at 10,000):

| point | before P99 prefill / mean prefill / P99 decode (I/L) | after |
|---|---|---|
| 128-128@32 | 1.3x / 1.2x / 1.1x | 1.2x / 1.3x / 1.2x |
| 128-128@36 | 1.2x / 1.3x / 1.2x | 1.1x / 1.4x / 1.1x |
| 128-128@40 | 1.0x / 1.7x / 1.1x | 1.2x / 1.4x / 1.1x |
| 256-256@7.4 | 1.0x / 1.1x / 1.2x | 1.0x / 1.1x / 1.6x |
| 256-256@7.8 | 1.0x / 1.1x / 1.3x | 1.1x / 1.2x / 1.5x |
| 256-256@8.7 | 1.0x / 1.2x / 1.4x | 1.0x / 1.2x / 1.4x |
| 512-512@2.6 | 1.0x / 1.0x / 1.9x | 1.0x / 1.0x / 1.8x |
| 512-512@3.0 | 1.0x / 1.0x / 1.8x | 1.0x / 1.0x / 1.9x |
| 512-512@3.4 | 1.0x / 1.3x / 1.6x | 1.0x / 1.3x / 1.5x |
| 128-512@4.1 | 1.1x / 1.0x / 1.4x | 1.0x / 1.6x / 1.4x |
| 128-512@4.3 | 1.0x / 1.0x / 1.5x | 1.0x / 1.0x / 1.5x |
| 128-512@4.8 | 0.7x / 1.9x / 1.7x | 0.8x / 1.4x / 1.7x |
| 512-128@10 | 1.0x / 1.0x / 1.1x | 1.0x / 1.1x / 1.2x |
| 512-128@18 | 1.0x / 1.2x / 1.1x | 1.0x / 1.1x / 1.0x |
| 512-128@20 | 1.0x / 1.2x / 1.1x | 1.0x / 1.2x / 1.0x |
| ShareGPT@20 | 1.0x / 1.2x / 1.3x | 2.3x / 1.3x / 1.3x |
| ShareGPT@26 | 1.1x / 1.1x / 1.2x | 1.1x / 1.2x / 1.1x |
| Azure conv@5.5 | 1.0x / 1.0x / 1.1x | 1.0x / 1.0x / 1.1x |
| Azure conv@10 | 0.8x / 1.0x / 1.0x | 0.7x / 1.1x / 1.0x |

- We still do not reproduce the paper's P99 prefill gains, and the reason is a floor that both
  policies share: at the paper's rates the P99 prefill latency is the prefill time of the P99
  prompt itself (artifact-zipf 256-256: the 99th-percentile prompt has 4,714 tokens, 1.05 s at
  0.2227 ms/token; both policies measure 1.10–1.19 s). INFaaS++'s queueing behind fragmented
  memory, the paper's mechanism, does happen here, but only to the longest prompts (< 1% of
  requests), so it sits beyond P99: the mean prefill latency of the longest 1% of prompts is
  up to 7.3x better under llumnix (128-512 at 4.1 req/s: 0.95 s vs 7.0 s; 2.8x at 128-128 36,
  2.3x at 256-256 7.8; column "longest 1% prompts"), while P99 moves 0.8–1.2x.
  For P99 to move 14.8x, more than 1% of INFaaS++'s requests must wait seconds, i.e. its
  instances must be memory-bound at these rates.
- They are not, in our model: by Little's law (rate × E[output × (prompt + output/2)] × ~50 ms
  per decode step) the paper's rates ask for 55–82% of the cluster's KV blocks in steady state
  (128-128 at 32–36: 73–82%; 256-256: 64–67%; 512-512: 55–64%; 128-512: 70–73%; 512-128:
  34–61%). INFaaS++ leaves at most 0.81% of the blocks fragmented and preempts 0–3.4% of its
  requests (at 5,000 requests per point; at 10,000, 0.00–1.45% and 0–5.7%). On the paper's testbed INFaaS++ preempted often (the artifact's figure11.claim:
  preemption loss reduced by 4.15 s per request on average), so its instances ran fuller at
  the same rates than our calibrated A10 model's do. The calibration itself agrees with the
  artifact's own rows: decode 42.9–46.8 ms at ~8K KV tokens (our model 42.7–46.5 ms), prefill
  58–1,995 ms for 256–8,192 tokens; the prefill intercept b = 0 is what those rows give (a
  relative-error fit has a negative intercept; the per-token cost grows with length, 0.215 →
  0.244 ms/token). The one physical floor the line misses is the weights read of a
  prefill-only step (~22 ms, which the decode model has as c): it adds at most ~20 ms to prompts
  under ~100 tokens, ≤ 5% of an instance's time at 128-128, too little to change the regime.
  We did not add it (the engine would need separate prefill-only steps); it stays open.
  Measured rather than estimated (a later session, sampling every instance's report): INFaaS++
  at 128-128 36 req/s holds 50% of its KV blocks on average (median 55%, p90 85%, p99 98%; an
  instance is more than 98% full 0.9% of the time), so memory is seldom what a request waits
  for.
- The baseline is not the cause either. The artifact's INFaaS++ dispatches like llumnix (its
  "load" strategy with the default consumed_speed metric: free blocks less all waiting demand
  over running plus waiting requests), without migration; ours takes the lowest physical usage
  (used + waiting demand + the request's, over the total). llumnix with migration off, i.e. the
  artifact's formula, at four of the paper's points (P99 / mean prefill, s; L / our I / artifact
  I): 128-128@36 0.59 / 0.71 / 0.59 and 0.096 / 0.136 / 0.100; 256-256@7.8 1.13 / 1.18 / 1.11
  and 0.114 / 0.142 / 0.119; 512-512@3.0 1.32 / 1.31 / 1.31 and 0.177 / 0.205 / 0.224;
  128-512@4.1 0.52 / 0.50 / 0.53 and 0.091 / 0.147 / 0.099. Against it llumnix gains even less
  (P99 0.98–1.02x, mean 1.04–1.27x); the table keeps ours (reproduce with `llumnix-zmq sim
  --policy llumnix --no-migration` with the point's flags).
- Fragmentation and preemptions per policy (columns on the right), at the paper's rates:
  llumnix keeps fragmented blocks at 0.00–0.13% and preempts 0–261 times per run; INFaaS++
  0.00–1.45% and 0–571 times (of 10,000 requests).
- P99 decode is close to the paper's: up to 1.8x at the paper's rates (512-512 at 3.0 req/s;
  paper: up to 2x), not worse anywhere.
- Worse points: 128-512 at 4.3 req/s (a paper rate), P99 prefill 0.65 s vs 0.53 s (0.8x) and
  mean 130 vs 112 ms (0.9x), with 2,367 migrations at threshold 10 and 261 vs 571 preemptions;
  past capacity, 512-512 at 3.4 (0.4x) and ShareGPT at 26 (0.9x). Open.
- At 5,000 requests the worse point was 128-512 at 4.8 req/s (× 1.12), P99 prefill 0.68 s vs
  0.55 s (0.8x), with 6,740 migrations at threshold 10. In an exploration run of this point (thresholds
  3 / 10, P99 0.74 s) llumnix's slowest requests were short prompts that waited 5–12 s in
  moments when no instance had room for its queue (the cluster full), while INFaaS++'s slowest
  are long prompts waiting up to 217 s (longest 1% here: 1.7 s vs 7.1 s, 4.2x for llumnix).
  Checked for a simulator cause: llumnix without migration has P99 0.63 s and a 2.2x worse
  mean prefill; at 256-256 10 req/s, 25 of llumnix's 238 preempting steps were on an instance
  importing or within 2 s of an import, so imports are not the main cause. Open.
- Past capacity (ShareGPT at 26 req/s, Azure conv at 10 req/s, almost twice its recorded rate)
  every policy queues (at 10,000 requests: Azure conv at 10, P99 prefill 8.8 s llumnix vs 11.0 s
  INFaaS++, 1.3x; ShareGPT at 26, 72.8 s vs 63.1 s, 0.9x; at 5,000: 0.75x and 1.1x). In an exploration beyond capacity (256-256 at 10 req/s, 5,000 requests)
  llumnix's P99 prefill was worse than INFaaS++'s (20 s vs 12 s) while llumnix without
  migration had 1.5 s: once every instance is full, migration keeps them all equally full and
  the queues grow everywhere. Not in this table; open.
- Earlier fix kept from the last run: a chunked-prefill prompt is admitted only when all of it
  fits (the old loop was the earlier "preemption storm", 470x, a simulator bug). Migration
  pairing sizes the destination's room to the source's smallest movable request.
"""

if __name__ == "__main__":
    sys.exit(main())
