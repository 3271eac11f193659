"""Figure 13 of Llumnix: priorities. 10% high-priority requests, 128-128, Gamma arrivals with
CV 2–8 at 26 req/s on 16 LLaMA-7B/A10 instances; llumnix vs llumnix-base (no priorities).

    python bench/paper/fig13.py [--report]

Variants per point:
- ``llumnix``: priority headroom in dispatch/pairing (PolicyConfig.headroom_blocks) and the
  engines serve HIGH first (queue order, NORMAL preempted first, and priority preemption: a
  HIGH request that does not fit preempts NORMAL running ones when that makes room);
- ``llumnix-wait``: llumnix without priority preemption (a HIGH request that does not fit
  waits for blocks, as vLLM v1's priority scheduling does);
- ``llumnix-sched``: the scheduler's headroom only, engines priority-blind (isolates §4.4.1);
- ``llumnix-base``: no priorities anywhere;
- ``llumnix-h64``: llumnix with a 64-block (1,024-token) headroom per HIGH request instead of
  the default 4 (PolicyConfig.headroom_blocks, passed as a flag).
Also at 18 req/s: our A10 model saturates near 25 req/s on 128-128 (the paper's testbed near
35), so 26 req/s is past our capacity and 18 req/s is the comparable operating point.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import RESULTS, md_table, ms, ratio, run_points

OUT = RESULTS / "paper_fig13.json"
CVS = (2, 4, 6, 8)
RATES = (26, 18)
VARIANTS = {  # name -> SimulationConfig overrides
    "llumnix": {"policy": "llumnix"},
    "llumnix-wait": {"policy": "llumnix", "priority_preemption": False},
    "llumnix-sched": {"policy": "llumnix", "engine_priorities": False},
    "llumnix-base": {"policy": "llumnix-base"},
    "llumnix-h64": {"policy": "llumnix", "headroom_blocks": 64},  # tuned: 64-block headroom
}
PAPER = "high-priority P99 prefill 3.6x–10x better than llumnix-base"


def points(requests: int, headroom: int | None) -> list[dict]:
    pts = []
    for rate in RATES:
        for cv in CVS:
            for name, over in VARIANTS.items():
                p = {"key": f"{rate}/cv{cv}/{name}", "trace": "zipf:128-128", "arrival": "gamma",
                     "cv": float(cv), "rate": float(rate), "requests": requests,
                     "priority_fraction": 0.1, "instances": 16, "seed": 1, **over}
                if headroom is not None and "headroom_blocks" not in over:
                    p["headroom_blocks"] = headroom
                pts.append(p)
    return pts


def report(res: dict) -> str:
    rows = []
    for rate in RATES:
        for cv in CVS:
            r = {n: res.get(f"{rate}/cv{cv}/{n}") for n in VARIANTS}
            if not all(r.values()):
                continue
            hi = {n: r[n]["by_priority"]["high"] for n in VARIANTS}
            lo = {n: r[n]["by_priority"]["normal"] for n in VARIANTS}
            rows.append([rate, cv] + [
                " / ".join(ms(g[n][k][s]) for n in VARIANTS)
                for g, k, s in ((hi, "ttft", "p99"), (hi, "ttft", "mean"),
                                (hi, "decode_per_token", "p99"), (lo, "ttft", "p99"),
                                (lo, "e2e", "mean"))
            ] + [ratio(hi["llumnix-base"]["ttft"]["p99"], hi["llumnix"]["ttft"]["p99"]),
                 ratio(hi["llumnix-base"]["ttft"]["p99"], hi["llumnix-wait"]["ttft"]["p99"]),
                 ratio(hi["llumnix-base"]["ttft"]["p99"], hi["llumnix-sched"]["ttft"]["p99"]),
                 ratio(hi["llumnix-base"]["ttft"]["p99"], hi["llumnix-h64"]["ttft"]["p99"]),
                 ratio(hi["llumnix-base"]["decode_per_token"]["p99"],
                       hi["llumnix"]["decode_per_token"]["p99"]),
                 ratio(hi["llumnix-base"]["decode_per_token"]["p99"],
                       hi["llumnix-h64"]["decode_per_token"]["p99"])])
    head = ["req/s", "CV", "HIGH P99 prefill ms (L / L-wait / L-sched / base / L-h64)",
            "HIGH mean prefill ms", "HIGH P99 decode ms", "NORMAL P99 prefill ms",
            "NORMAL mean e2e ms", "HIGH P99 prefill base/L", "base/L-wait", "base/L-sched",
            "base/L-h64",
            "HIGH P99 decode base/L", "base/L-h64"]
    return (f"Paper: {PAPER}.\n\n## paper vs ours\n\n" + _claims(res) + "\n\n## per point\n\n"
            + md_table(head, rows))


def _claims(res: dict) -> str:
    """HIGH P99 prefill, base / variant, over CV 2–8: the paper's range next to ours per rate."""
    rows = []
    for rate in RATES:
        for name, label in (("llumnix", "llumnix"),
                            ("llumnix-wait", "llumnix without priority preemption"),
                            ("llumnix-sched", "llumnix, priority-blind engines"),
                            ("llumnix-h64", "llumnix, 64-block headroom")):
            rs = []
            for cv in CVS:
                base = res.get(f"{rate}/cv{cv}/llumnix-base")
                var = res.get(f"{rate}/cv{cv}/{name}")
                if base and var:
                    rs.append(base["by_priority"]["high"]["ttft"]["p99"]
                              / var["by_priority"]["high"]["ttft"]["p99"])
            if rs:
                paper = "3.6x–10x (26 req/s on the paper's testbed)" if name == "llumnix" else "-"
                rows.append([f"{rate} req/s", label, paper, f"{min(rs):.1f}x–{max(rs):.1f}x"])
    return md_table(["rate", "HIGH P99 prefill, llumnix-base / ...", "paper", "ours (CV 2–8)"],
                    rows)


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(RATES), 3, figsize=(12, 3.2 * len(RATES)))
    for row, rate in enumerate(RATES):
        for col, (prio, key, stat, name) in enumerate((
                ("high", "ttft", "p99", "HIGH P99 prefill (s)"),
                ("high", "decode_per_token", "p99", "HIGH P99 decode (s)"),
                ("normal", "ttft", "p99", "NORMAL P99 prefill (s)"))):
            ax = axes[row][col]
            for n, marker in zip(VARIANTS, "oD^sv"):
                xs = [cv for cv in CVS if f"{rate}/cv{cv}/{n}" in res]
                ys = [res[f"{rate}/cv{cv}/{n}"]["by_priority"][prio][key][stat] for cv in xs]
                ax.plot(xs, ys, marker=marker, label=n)
            ax.set_yscale("log")
            ax.set_title(f"{name}, {rate} req/s", fontsize=9)
            ax.set_xlabel("Gamma CV")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--report", action="store_true")
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--headroom-blocks", type=int, default=None)
    a = p.parse_args(argv)
    res = json.loads(OUT.read_text()) if a.report else \
        run_points(points(a.requests, a.headroom_blocks), OUT)
    text = report(res)
    (RESULTS / "paper_fig13.md").write_text(HEADER + text + "\n" + NOTES)
    plot(res, RESULTS / "paper_fig13.png")
    print(text)
    return 0


HEADER = """# Figure 13: priorities (10% HIGH, 128-128, Gamma CV 2–8), llumnix vs llumnix-base

16 LLaMA-7B/A10 instances simulated, 10,000 requests per point, seed 1; regenerate with
`python bench/paper/fig13.py`. L = llumnix (scheduler headroom of 4 blocks per HIGH request +
priority-aware engines with priority preemption), L-wait = llumnix without priority preemption
(HIGH requests wait for blocks), L-sched = llumnix with priority-blind engines, base =
llumnix-base, L-h64 = llumnix with a 64-block headroom. Ratios: base / variant (higher = variant better).

"""

NOTES = """
## Reading the numbers

- This run: every point rerun with long-prompt dispatch in every llumnix variant (a NORMAL
  prompt of >= 512 tokens goes where the fewest requests would wait for its prefill, among
  instances keeping F_d >= 10; scheduler/policy/dispatch.py). At 26 req/s llumnix's HIGH P99
  prefill is 1.10–1.24 s at every CV, 38.2x / 31.5x / 45.2x / 23.6x better than llumnix-base
  at CV 2 / 4 / 6 / 8 (paper 3.6–10x; the run before: 38.7x / 48.3x / 63.0x / 25.7x, the
  difference is llumnix-base's P99, which moves by seconds between runs this far past
  capacity); without priority preemption (L-wait) 19.5x / 26.0x / 4.8x / 11.5x. NORMAL
  requests under L vs L-wait: P99 prefill 0.82–1.12x (1.12x at CV 4), mean end-to-end
  0.95–1.04x. Other arrival/length seeds with this rule (llumnix vs llumnix-base, 26 req/s,
  CV 2/4/6/8): seed 2 34.5x / 47.9x / 70.2x / 87.1x; seed 3 1.0x / 18.3x / 1.1x / 12.9x
  (its lengths do not saturate the cluster at CV 2 and 6: llumnix-base's HIGH P99 is already
  1.1 s there); llumnix's HIGH P99 is 1.02–1.17 s at every CV and seed. The "other seeds"
  bullet below is from the run before.
- The run before it: every point rerun on the recalibrated A10 profile (a fixed 5.6 ms per step; weights
  and KV read at one bandwidth, see engine/sim/profiles.py; steps at a few thousand KV tokens
  ~20% longer). At 26 req/s llumnix's HIGH P99 prefill is 1.11–1.30 s at every CV (the
  prefill time of the longest HIGH prompts), 38.7x / 48.3x / 63.0x / 25.7x better than
  llumnix-base at CV 2 / 4 / 6 / 8 (paper: 3.6–10x; on the previous profile 55.9–67.2x);
  without priority preemption (L-wait) 29.6x / 38.8x / 8.3x / 12.1x. Past capacity the cost
  falls on NORMAL requests: their P99 prefill is 0.66–0.98x of L-wait's and their mean
  end-to-end latency 0.81–1.0x of it, i.e. no worse here. At 18 req/s L and L-wait are
  identical (no HIGH request waits for blocks).
- The run before it added priority preemption to the engines (``SimConfig.priority_preemption``,
  on by default, as vLLM v0's priority scheduling did; the torch engine has it too): a HIGH
  request at the head of the queue whose blocks do not fit preempts NORMAL running requests,
  last admitted first, when that makes room. Before, it waited for blocks while the running
  NORMAL requests kept growing into every block freed (L-wait).
- Other arrival/length seeds (llumnix vs llumnix-base at 26 req/s, CV 2/4/6/8, this profile,
  not in the table): seed 2 gives 47.4x / 72.2x / 56.5x / 104.6x. Seed 3 gives 1.0x / 9.4x /
  1.3x / 2.9x: its lengths load the cluster less, and at CV 2 and 6 llumnix-base's HIGH P99
  prefill is already near the prefill floor (1.1–1.6 s), so there is little to win; llumnix
  keeps HIGH at 1.1–1.3 s at every CV and seed. Where 26 req/s saturates the cluster,
  priority preemption keeps HIGH requests at that floor.
- Rerun after the engine change (a chunked-prefill prompt is admitted only when all of it fits
  in free KV blocks; before, a long prompt was admitted on its first chunk and preempted itself
  at each next chunk) and the pairing change (a destination must have room for the source's
  smallest movable request). The workload is the paper's (zipf 128-128, Gamma CV 2–8, 10%
  HIGH), not the artifact-zipf 512-512 lengths of Figure 14. Rate mapping: our A10 model
  saturates near 25 req/s on 128-128 (the paper's testbed near 35), so the paper's 26 req/s is
  past our capacity and 18 req/s is the comparable operating point.
- The run before it: every migrating variant rerun after a freeness fix (ΣV counts the blocks held for
  an incoming migration, so dispatch no longer sees a destination mid-import as freer than it
  is). At 26 req/s llumnix's HIGH P99 prefill is 3.2–50x better than llumnix-base (was
  5.7–47x; paper: 3.6–10x): 49.7x, 18.3x and 11.2x at CV 2, 4 and 8, but 3.2x at CV 6, where
  llumnix's HIGH P99 went from 5.6 s to 24.6 s, just under the paper's low end. The cluster is
  far past capacity there (overall P99 prefill 53–120 s for every variant, 380–570
  preemptions per run), so single points swing: the 64-block headroom (L-h64) gives 48.6x at
  CV 6 and 5.1–14.3x elsewhere. Most of the gain comes from the engines serving HIGH first:
  with priority-blind engines the scheduler's headroom alone (L-sched) gives 1.2–1.6x.
- At 18 req/s the cluster has room and there is nothing to win on prefill: every variant's
  HIGH P99 prefill is the prefill time of the longest prompts (~1 s). HIGH P99 decode is then
  0.4–1.0x (worse) with llumnix: it is the 10th-worst of ~1,000 HIGH requests, set by short
  requests whose single decode step shares a batch with a 4,096-token prefill chunk; our
  latency model's decode step grows little with the batch (5.6 ms per step + 28.2 ms weights
  read + 0.12 ms/request + 1.1 µs/KV token), so lighter instances buy HIGH requests little.
"""

if __name__ == "__main__":
    sys.exit(main())
