"""``llumnix-zmq sim``: simulate a cluster on a workload and print a one-screen summary.

    llumnix-zmq sim --instances 16 --profile llama-7b-a10 --trace zipf:128-128 \
        --arrival poisson --rate 34 --requests 10000 --policy llumnix --seed 1 --json out.json
    llumnix-zmq sim --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv --trace-format azure
    llumnix-zmq sim --trace zipf:128-128 --arrival gamma --cv 4 --rate 26 --priority-fraction 0.1
    llumnix-zmq sim --trace zipf:512-512 --rate 2.5 --autoscale 1,16 --startup-delay 10

Times in the JSON are seconds; the table prints milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine.sim import PROFILES
from .config import POLICIES, SimulationConfig
from .runner import run_simulation


def _autoscale(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN,MAX, e.g. 1,16") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llumnix-zmq sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    c = p.add_argument_group("cluster and engine")
    c.add_argument("--instances", type=int, default=16)
    c.add_argument("--profile", default="llama-7b-a10", choices=sorted(PROFILES))
    c.add_argument("--num-blocks", type=int, default=None, help="KV blocks per instance")
    c.add_argument("--block-size", type=int, default=16)
    c.add_argument("--max-batch-size", type=int, default=256)
    c.add_argument("--max-num-batched-tokens", type=int, default=4096)
    c.add_argument("--max-model-len", type=int, default=8192)
    c.add_argument("--no-chunked-prefill", action="store_true")
    w = p.add_argument_group("workload")
    w.add_argument("--trace", default="zipf:128-128",
                   help="zipf:IN-OUT | artifact-zipf:IN-OUT | fixed:IN-OUT | azure | mooncake | "
                        "sharegpt | FILE")
    w.add_argument("--trace-format", choices=["azure", "mooncake", "sharegpt"], default=None)
    w.add_argument("--arrival", choices=["poisson", "gamma", "trace"], default="poisson")
    w.add_argument("--rate", type=float, default=None, help="req/s (trace: rescale to this rate)")
    w.add_argument("--cv", type=float, default=1.0, help="gamma arrivals: coefficient of variation")
    w.add_argument("--time-scale", type=float, default=1.0, help="multiply every arrival offset")
    w.add_argument("--requests", type=int, default=10000)
    w.add_argument("--priority-fraction", type=float, default=0.0)
    w.add_argument("--max-output", type=int, default=None)
    w.add_argument("--seed", type=int, default=1)
    s = p.add_argument_group("scheduling (thresholds default to PolicyConfig's)")
    s.add_argument("--policy", choices=POLICIES, default="llumnix")
    s.add_argument("--no-migration", action="store_true")
    s.add_argument("--selection", default="shortest-running")
    s.add_argument("--migrate-out-threshold", type=float, default=None)
    s.add_argument("--migrate-in-threshold", type=float, default=None)
    s.add_argument("--headroom-blocks", type=int, default=None)
    s.add_argument("--long-prompt-tokens", type=int, default=None,
                   help="llumnix dispatch: a prompt this long goes where the fewest requests "
                        "wait for its prefill (0: off; default PolicyConfig's)")
    s.add_argument("--long-prompt-min-freeness", type=float, default=None)
    s.add_argument("--report-period", type=float, default=0.05, help="seconds")
    s.add_argument("--no-report-on-change", action="store_true",
                   help="report only periodically (the worker also reports on arrival/finish)")
    s.add_argument("--pairing-period", type=float, default=0.1, help="seconds")
    s.add_argument("--max-migrations-per-pair", type=int, default=1)
    s.add_argument("--max-concurrent-migrations", type=int, default=4)
    s.add_argument("--engine-priorities", choices=["auto", "on", "off"], default="auto",
                   help="pass HIGH priority to the engines (auto: only under llumnix)")
    s.add_argument("--no-priority-preemption", action="store_true",
                   help="engines: a HIGH request that does not fit waits for blocks instead of "
                        "preempting NORMAL running requests")
    s.add_argument("--frontend-latency-ms", type=float, default=0.0,
                   help="arrival -> dispatch delay (HTTP, tokenizer, scheduler query)")
    s.add_argument("--step-overhead-ms", type=float, default=0.0,
                   help="added to every engine step (the worker loop's own cost)")
    m = p.add_argument_group("migration cost")
    m.add_argument("--bandwidth-gbps", type=float, default=64.0)
    m.add_argument("--handshake-ms", type=float, default=1.0)
    m.add_argument("--last-stage-max-blocks", type=int, default=16)
    m.add_argument("--max-stages", type=int, default=3)
    a = p.add_argument_group("auto-scaling")
    a.add_argument("--autoscale", type=_autoscale, default=None, metavar="MIN,MAX")
    a.add_argument("--scale-out-threshold", type=float, default=None)
    a.add_argument("--scale-in-threshold", type=float, default=None)
    a.add_argument("--scale-cooldown", type=float, default=10.0, help="seconds")
    a.add_argument("--startup-delay", type=float, default=10.0, help="seconds to launch one")
    o = p.add_argument_group("output")
    o.add_argument("--json", default=None, help="write the result here")
    o.add_argument("--max-sim-seconds", type=float, default=None,
                   help="stop the virtual clock here (unfinished requests are left out)")
    o.add_argument("--progress", dest="progress", action="store_true", default=None)
    o.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--quiet", action="store_true", help="no summary table")
    return p


def config_from_args(a: argparse.Namespace) -> SimulationConfig:
    lo, hi = a.autoscale or (0, 0)
    prios = {"auto": None, "on": True, "off": False}[a.engine_priorities]
    return SimulationConfig(
        instances=a.instances, profile=a.profile, block_size=a.block_size, num_blocks=a.num_blocks,
        max_batch_size=a.max_batch_size, max_num_batched_tokens=a.max_num_batched_tokens,
        max_model_len=a.max_model_len, chunked_prefill=not a.no_chunked_prefill,
        trace=a.trace, trace_format=a.trace_format, arrival=a.arrival, rate=a.rate, cv=a.cv,
        time_scale=a.time_scale, requests=a.requests, priority_fraction=a.priority_fraction,
        max_output=a.max_output, seed=a.seed, policy=a.policy, migration=not a.no_migration,
        selection=a.selection, migrate_out_threshold=a.migrate_out_threshold,
        migrate_in_threshold=a.migrate_in_threshold, headroom_blocks=a.headroom_blocks,
        long_prompt_tokens=a.long_prompt_tokens,
        long_prompt_min_freeness=a.long_prompt_min_freeness,
        report_period_s=a.report_period, report_on_change=not a.no_report_on_change,
        pairing_period_s=a.pairing_period, max_migrations_per_pair=a.max_migrations_per_pair,
        max_concurrent_migrations=a.max_concurrent_migrations, engine_priorities=prios,
        priority_preemption=not a.no_priority_preemption,
        bandwidth_gbps=a.bandwidth_gbps, handshake_ms=a.handshake_ms,
        last_stage_max_blocks=a.last_stage_max_blocks, max_stages=a.max_stages,
        autoscale_min=lo, autoscale_max=hi, scale_out_threshold=a.scale_out_threshold,
        scale_in_threshold=a.scale_in_threshold, scale_cooldown_s=a.scale_cooldown,
        startup_delay_s=a.startup_delay, max_sim_seconds=a.max_sim_seconds,
        frontend_latency_ms=a.frontend_latency_ms, step_overhead_ms=a.step_overhead_ms,
        progress=a.progress)


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def format_summary(res: dict) -> str:
    cfg, m, wl = res["config"], res["metrics"], res["workload"]
    rate = f"{wl['rate']:.2f}" if wl.get("rate") else "-"
    lines = [
        f"==== llumnix-zmq sim: {cfg['policy']} | {cfg['trace']} | {wl['n']} req @ {rate} req/s "
        f"({cfg['arrival']}{', cv ' + str(cfg['cv']) if cfg['arrival'] == 'gamma' else ''}) ====",
        f"{'':<22}{'mean':>10}{'p50':>10}{'p80':>10}{'p95':>10}{'p99':>10}   (ms)",
    ]
    groups = [("", m)] + [(f"[{k}] ", v) for k, v in res.get("by_priority", {}).items()]
    for prefix, g in groups:
        for key, label in (("ttft", "TTFT (prefill)"), ("decode_per_token", "decode / token"),
                           ("e2e", "end-to-end"), ("preemption_loss", "preemption loss")):
            if prefix and key == "preemption_loss":
                continue
            s = g[key]
            lines.append(f"{prefix + label:<22}" + "".join(
                f"{_ms(s[k]):>10}" for k in ("mean", "p50", "p80", "p95", "p99")))
    frag = m["fragmentation"]["fraction"]
    dt = m["migration_downtime"]
    lines += [
        f"migrations {m['migrations']} committed of {m['migrations_started']} "
        f"{m['migration_reasons'] or ''}; downtime mean {_ms(dt['mean'])} ms, "
        f"p99 {_ms(dt['p99'])} ms",
        f"preemptions {m['preemptions']}; fragmentation "
        f"{'-' if frag is None else f'{frag * 100:.2f}%'} of KV blocks",
        f"cost {m['instance_seconds']:.0f} instance-s (avg {m['avg_instances'] or 0:.2f} instances"
        f", {m['instances_launched']} launched, {m['instances_stopped']} stopped); "
        f"makespan {m['makespan_s']:.1f} s",
        f"simulated {res['sim_seconds']:.1f} s in {res['wall_seconds']:.1f} s wall "
        f"({res['sim_speed'] or 0:.1f}x), {res['events']} events",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"llumnix-zmq sim: {exc}", file=sys.stderr)
        return 2
    res = run_simulation(cfg)
    if not args.quiet:
        print(format_summary(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
