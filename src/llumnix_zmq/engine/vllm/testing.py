"""Test and benchmark plumbing: each vLLM engine in its own spawned process (vLLM keeps
process-wide state), driven through a pipe. ``EngineProc.call("step")`` runs ``engine.step()``
there; results and exceptions come back pickled (plumbing for tests and bench/ only, never on
the wire). ``reference_outputs`` runs vLLM's own offline ``LLM.generate``."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback


def _serve(conn, model: str, options: dict, env: dict) -> None:
    os.environ.update(env)
    from llumnix_zmq.engine.vllm import make_vllm_engine

    try:
        engine = make_vllm_engine(model, **options)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("err", f"{exc!r}\n{traceback.format_exc()}"))
        return
    conn.send(("ok", None))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, args = msg
        try:
            result = _run(engine, name, args)
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("exc", exc))
    engine.close()


def _run(engine, name: str, args):
    if name == "run_all":  # step until idle, collect every delta
        deltas = []
        while engine.has_work():
            deltas += engine.step().deltas
        return deltas
    if name == "steps":
        return [d for _ in range(args[0]) for d in engine.step().deltas]
    return getattr(engine, name)(*args)


class EngineProc:
    def __init__(self, model: str, omp_bind: str, **options):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": omp_bind}
        self.proc = ctx.Process(target=_serve, args=(child, model, options, env), daemon=True)
        self.proc.start()
        status, detail = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"vLLM engine did not start: {detail}")

    def call(self, name: str, *args):
        self.conn.send((name, args))
        status, result = self.conn.recv()
        if status == "exc":
            raise result
        return result

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


def _reference(conn, model: str, prompts, max_tokens: int, env: dict) -> None:
    os.environ.update(env)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, dtype="float32", block_size=32, enforce_eager=True, seed=0,
              max_model_len=4096, enable_prefix_caching=False, num_gpu_blocks_override=513,
              gpu_memory_utilization=0.2)  # GPU: beside two test engines; CPU: unused
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    conn.send([list(o.outputs[0].token_ids) for o in outs])


def reference_outputs(model: str, prompts, max_tokens: int) -> list[list[int]]:
    """vLLM's own offline ``LLM.generate`` (greedy), in a throwaway process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}
    p = ctx.Process(target=_reference, args=(child, model, prompts, max_tokens, env), daemon=True)
    p.start()
    if not parent.poll(300):
        p.kill()
        raise RuntimeError("reference LLM.generate timed out")
    out = parent.recv()
    p.join(30)
    return out
