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
PAPER_LLUMNIX = "llumnix-no-long-prompt"  # key suffix of the ablation points
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
            # the paper's llumnix: our dispatch without the long-prompt rule (ablation)
            pts.append({**pts[-3], "key": f"{label}@{rate}/{PAPER_LLUMNIX}", "policy": "llumnix",
                        "long_prompt_tokens": 0})
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
    return (summary + "\n\n" + md_table(head, rows) + "\n\n" + ablation_table(res) + "\n\n"
            + ceiling_table(res))


def ablation_table(res: dict) -> str:
    """llumnix with and without long-prompt dispatch (the paper's llumnix has none), each
    against INFaaS++, at every point."""
    rows, best = [], {False: 0.0, True: 0.0}
    for label, _, _, rates, _ in TRACES:
        for rate in rates:
            lm, pm, im = (res.get(f"{label}@{rate}/{p}") for p in
                          ("llumnix", PAPER_LLUMNIX, "infaas++"))
            if lm is None or pm is None or im is None:
                continue
            lm, pm, im = lm["metrics"], pm["metrics"], im["metrics"]
            cells = []
            for m in (pm, lm):
                cells.append(" / ".join(
                    ratio(im[k][s_], m[k][s_]) for k, s_ in
                    (("ttft", "p99"), ("ttft", "mean"), ("decode_per_token", "p99"))))
            if _at_paper_rate(f"{label}@{rate}"):
                for on, m in ((False, pm), (True, lm)):
                    best[on] = max(best[on], im["decode_per_token"]["p99"]
                                   / m["decode_per_token"]["p99"])
            rows.append([f"{label}@{rate}", cells[0], cells[1],
                         f"{ms(pm['decode_per_token']['p99'])} / "
                         f"{ms(lm['decode_per_token']['p99'])}"])
    if not rows:
        return ""
    return ("### Long-prompt dispatch (ours) vs the paper's llumnix\n\nThe paper's llumnix "
            "dispatches every NORMAL request by freeness; ours sends a prompt of >= 512 tokens "
            "where the fewest requests would wait for its prefill (scheduler/policy/dispatch.py)."
            f" P99 decode at the paper's rates: up to {best[False]:.1f}x without the rule, "
            f"{best[True]:.1f}x with it (paper: 2x). Ratios are INFaaS++ / variant.\n\n"
            + md_table(["point", "without the rule: P99 / mean prefill / P99 decode",
                        "with it (the table above)", "P99 decode ms without / with"], rows))


def prefill_floor(config: dict) -> tuple[float, float]:
    """(P99, mean) of a point's prefill latencies if every prompt were prefilled alone the
    moment it arrived (one prefill-only step each, no queueing, no decodes beside it): no
    policy can do better, so INFaaS++'s latency over this bounds any policy's gain.
    ``config``: the point's recorded SimulationConfig arguments (its workload and profile)."""
    import numpy as np

    from llumnix_zmq.engine.sim.profiles import get_profile
    from llumnix_zmq.sim import SimulationConfig, build_items

    cfg = SimulationConfig(progress=False, **config)
    prof = get_profile(cfg.profile)
    pre = np.array([prof.step_s(i.prompt_tokens, 0, 0) for i in build_items(cfg)])
    return float(np.percentile(pre, 99)), float(pre.mean())


def ceiling_table(res: dict) -> str:
    """At each of the paper's rates: the most any policy could win over INFaaS++."""
    rows = []
    for label, rates in PAPER_RATES.items():
        for rate in rates:
            lm, im = (res.get(f"{label}@{rate}/{p}") for p in ("llumnix", "infaas++"))
            if lm is None or im is None:
                continue
            f99, fmean = prefill_floor(im["config"])
            i, l_ = im["metrics"]["ttft"], lm["metrics"]["ttft"]
            rows.append([f"{label}@{rate}", f"{ms(f99)} / {ms(fmean)}",
                         f"{ms(i['p99'])} / {ms(i['mean'])}",
                         f"{i['p99'] / f99:.2f}x / {i['mean'] / fmean:.2f}x",
                         f"{i['p99'] / l_['p99']:.2f}x / {i['mean'] / l_['mean']:.2f}x"])
    return ("### What any policy could win at the paper's rates\n\nThe floor is each point's "
            "prefill latency if every prompt were prefilled alone the moment it arrived (one "
            "prefill-only step each: no queueing, no decodes beside it); no scheduler can beat "
            "it, so INFaaS++ / floor is the largest gain any policy could show over INFaaS++ "
            "on this calibrated model (paper: up to 14.8x on P99, 7.7x on the mean).\n\n"
            + md_table(["point", "floor P99 / mean prefill ms", "INFaaS++ P99 / mean ms",
                        "most any policy could win: P99 / mean", "llumnix wins: P99 / mean"],
                       rows))


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

- This run: llumnix's points rerun with long-prompt dispatch (scheduler/policy/dispatch.py): a
  NORMAL prompt of >= 512 tokens goes to the instance where the fewest requests would wait for
  its prefill, among those keeping F_d >= 10. Without chunked prefill a long prompt's prefill
  step stalls every decode on its instance (a 4,000-token prompt ~0.9 s), and the P99 per-token
  decode latency is mostly these stalls, spread over short outputs: at 512-512 2.6 req/s the
  slowest 1% of decodes had a median of 12 output tokens (INFaaS++: 6) and no preemption loss
  worth counting. P99 decode is now up to 2.2x better than INFaaS++ at the paper's rates
  (512-512 at 2.6 and 3.0; 256-256 at 7.4: 2.1x; was up to 1.7x), meeting the paper's 2x;
  P99 prefill up to 1.3x and mean up to 1.4x (unchanged), and no point is worse for llumnix on
  any of the three (128-512@4.8 was 0.6x on P99 prefill, now 1.0x). Past capacity, ShareGPT
  at 26 req/s went from 11.6 s to 15.3 s P99 prefill (still 1.3x better than INFaaS++). The
  table "Long-prompt dispatch (ours) vs the paper's llumnix" reruns llumnix without the rule
  (`--long-prompt-tokens 0`) at every point: its numbers are the previous run's exactly. The
  cut was chosen on 512-512 at 2.6 req/s (P99 decode 69.6 ms without the rule; 52–54 ms with
  cuts of 256, 512 or 1,024 tokens, 57 ms at 2,048), then checked at five other points. Seed 2
  (not in the table): P99 decode 2.47x at 512-512@2.6, 2.31x at 512-512@3.0, 1.90x at
  256-256@7.4.
- The run before it: every point rerun on the recalibrated A10 profile
  (engine/sim/profiles.py). A step now pays a fixed 5.6 ms (the intercept of the artifact's prefill rows, fitted with
  attention's quadratic term), and a decode step reads the weights and the KV cache at one
  bandwidth (the 8K-token decode rows then imply 479 GB/s, 80% of the A10's peak): c = 28.2 ms,
  e = 1.10 µs per KV token, where the previous profile had c = 22 ms (weights at the full 600
  GB/s) and e = 2.53 µs (KV at 207 GB/s). Steps at 8K KV tokens are unchanged (the rows);
  steps at the few thousand KV tokens most instances hold are ~20% longer. At the paper's
  rates the headline ratios barely move: P99 prefill up to 1.3x (was 1.2x), mean prefill up to
  1.4x (was 1.6x), P99 decode up to 1.7x (was 1.8x). Three points that were worse for llumnix
  are not any more (512-512@3.4 0.4x → 2.0x, 128-512@4.3 0.8x → 1.0x, ShareGPT@26 0.9x →
  1.7x); one is (128-512@4.8, past capacity, 0.6x).
- How far the paper's regime is (128-128 at 36 req/s, 10,000 requests, seed 1, `llumnix-zmq sim
  ... --step-overhead-ms X`; llumnix before long-prompt dispatch): on the previous profile, 8 ms more per step made INFaaS++
  memory-bound: P99 prefill 19.5 s vs llumnix 1.14 s (17x; mean 4.4x, P99 decode 1.2x; 432 vs
  221 preemptions), the paper's picture. But that profile then takes ~51 ms per step at 8K KV
  tokens, 10–18% above the artifact's rows. On this profile, 3 and 6 ms more per step give
  1.1x and 1.3x (INFaaS++ preempts 26 and 51 times). Every coefficient of this profile × 1.1
  gives 1.5x / 1.0x / 1.1x on P99 prefill at 128-128@36 / 256-256@7.8 / 512-512@3.0 (mean 1.6x
  / 1.7x / 2.4x); × 1.2 (51–56 ms per step at 8K KV tokens) gives 8.8x at 128-128@36 (12.1 s vs
  1.37 s; mean 4.0x) while 256-256@7.8 stays at 1.0x and 512-512@3.0 is past capacity for both
  (40 s vs 21 s). The collapse needs steps that slow down steeply as an instance fills (a
  large e) or are slower overall than the rows show. So the paper's
  testbed ran slower per step under serving load than its own microbenchmark rows (Fig. 10's
  migration experiment), or its instances held less KV; we keep the model the rows support.
- Earlier: llumnix's points rerun after a freeness fix (ΣV counts the blocks an
  instance holds for an incoming migration). Before that: 10,000 requests per point (was
  5,000), and the testbed engine (no chunked prefill, 12,800 batched tokens, the artifact's
  thresholds; before it, today's vLLM behaviour). None of those moved the headline past 1.3x
  (P99 prefill) at the paper's rates; `git log -p bench/results/paper_fig11.md` has each table.
- The paper's prefill gains are out of any policy's reach on this model: the table above bounds
  what a perfect scheduler (every prompt prefilled alone the moment it arrives) could win
  over our INFaaS++ at the paper's rates: 1.06–1.69x on P99 prefill and 1.55–4.06x on the
  mean (paper: 14.8x and 7.7x). llumnix gets 0.98–1.28x and 1.05–1.38x of it.
- We do not reproduce the paper's P99 prefill gains, and the reason is a floor that both
  policies share: at the paper's rates the P99 prefill latency is the prefill time of the P99
  prompt itself (artifact-zipf 256-256: the 99th-percentile prompt has 4,714 tokens, 1.02 s of
  prefill; both policies measure 1.10–1.16 s). INFaaS++'s queueing behind fragmented memory,
  the paper's mechanism, does happen here, but mostly to the longest prompts (~1% of
  requests), at or beyond P99: the mean prefill latency of the longest 1% of prompts is up to
  3.8x better under llumnix at a paper rate (128-512 at 4.3 req/s: 0.99 s vs 3.74 s; 2.3x at
  128-128 36; 5.1x at 128-128 40), while P99 moves 1.0–1.3x. For P99 to move 14.8x, more than
  1% of INFaaS++'s requests must wait seconds, i.e. its instances must be memory-bound at
  these rates, which they are not in our model (the sensitivity bullet above: the rows do not
  allow it). Measured on the previous profile (sampling every instance's report): INFaaS++ at
  128-128 36 req/s held 50% of its KV blocks on average (p90 85%; more than 98% full 0.9% of
  the time). On the paper's testbed INFaaS++ preempted often (the artifact's figure11.claim:
  preemption loss reduced by 4.15 s per request on average); here it preempts 1–447 times per
  10,000 requests at the paper's rates (llumnix 0–126), with 0.03–1.28% of its blocks
  fragmented (llumnix 0.00–0.05%).
- The baseline is not the cause either. The artifact's INFaaS++ dispatches like llumnix (its
  "load" strategy with the default consumed_speed metric: free blocks less all waiting demand
  over running plus waiting requests), without migration; ours takes the lowest physical usage
  (used + waiting demand + the request's, over the total). On the previous profile, llumnix
  with migration off (the artifact's formula) at four of the paper's points gave P99 prefill
  within 2% of llumnix's and a mean 1.04–1.27x worse, i.e. an even harder baseline; the table
  keeps ours (reproduce with `llumnix-zmq sim --policy llumnix --no-migration` and the point's
  flags).
- P99 decode meets the paper's: up to 2.2x at the paper's rates (paper: up to 2x), not worse
  anywhere (see the first bullet).
- 128-512 at 4.8 req/s (× 1.12 of the paper's top rate, past capacity), formerly the worse
  point (P99 prefill 1.19 s vs 0.68 s before long-prompt dispatch): now 0.68 s vs 0.68 s,
  mean 173 vs 194 ms, with 6,668 migrations at threshold 10 and 363 vs 899 preemptions.
- Past capacity (ShareGPT at 26 req/s, Azure conv at 10 req/s, almost twice its recorded rate)
  every policy queues; llumnix's P99 prefill is 1.3x (15.3 s vs 19.4 s) and 2.1x (1.4 s vs
  3.0 s) better.
- Simulator fixes kept from earlier runs: a chunked-prefill prompt is admitted only when all of
  it fits (the earlier "preemption storm", 470x, was a simulator bug); migration pairing sizes
  the destination's room to the source's smallest movable request.
"""

if __name__ == "__main__":
    sys.exit(main())
