"""Live migration between two vLLM engines through the Engine hooks (the calls the migration
coordinator makes, in its order): staged pre-copy while the request decodes, suspend, last
blocks, export_state -> import_request (the KV connector injects the blocks), remove on the
source. The migrated request continues with exactly the tokens of an unmigrated run, and every
failure leaves it running once with both KV pools back to baseline."""

from __future__ import annotations

import pytest

from helpers import PROMPTS, baseline, collect, greedy, req
from llumnix_zmq.engine.base import EngineError
from llumnix_zmq.protocol.messages import FinishReason, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

N = 160  # output tokens: 71 + 160 tokens = 8 blocks of 32


def seeded(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True)


def unmigrated(eng, sampling, rid="ref"):
    eng.call("add_request", req(rid, PROMPTS[1], sampling))
    return collect(eng.call("run_all"))[rid]


def copy_blocks(src, dst, rid, start, end):
    frames = src.call("export_blocks", rid, start, end)
    ids = dst.call("reserve_blocks", end - start)
    assert ids is not None and len(ids) == end - start
    dst.call("import_blocks", ids, frames)
    return ids


def precopy(src, dst, rid, rounds, steps_between):
    """Pre-copy rounds while the request keeps decoding; returns (blocks sent, dst ids, deltas)."""
    sent, ids, deltas = 0, [], []
    for _ in range(rounds):
        full = src.call("num_full_blocks", rid)
        if full > sent:
            ids += copy_blocks(src, dst, rid, sent, full)
            sent = full
        deltas += src.call("steps", steps_between)
    return sent, ids, deltas


def final_stage(src, dst, rid, sent, ids):
    src.call("suspend", rid)
    total = len(src.call("request_block_ids", rid))
    ids = ids + copy_blocks(src, dst, rid, sent, total)
    return src.call("export_state", rid), ids


@pytest.mark.parametrize("sampling", [greedy(N), seeded(N)], ids=["greedy", "seeded"])
def test_migrated_request_continues_exactly(engines, sampling):
    a, b = engines
    ref = unmigrated(a, sampling)
    assert len(ref) == N
    a.call("add_request", req("m", PROMPTS[1], sampling))
    deltas = a.call("steps", 20)
    sent, ids, more = precopy(a, b, "m", rounds=2, steps_between=35)
    deltas += more
    assert sent >= 3  # blocks really moved while the request decoded
    state, ids = final_stage(a, b, "m", sent, ids)
    assert a.call("migration_candidates") == []  # suspended: not decoding
    assert a.call("steps", 2) == []
    assert state.num_computed_tokens == len(PROMPTS[1]) + len(state.output_token_ids) - 1
    b.call("import_request", state, ids)
    a.call("remove_request", "m")
    baseline(a)
    after = b.call("run_all")
    assert after[0].start_index == len(state.output_token_ids)
    out = collect(deltas + after)["m"]
    assert out == ref
    assert after[-1].finish_reason == FinishReason.LENGTH
    baseline(b)


def test_there_and_back(engines):
    a, b = engines
    ref = unmigrated(b, greedy(N))
    a.call("add_request", req("tb", PROMPTS[1], greedy(N)))
    deltas = a.call("steps", 30)
    for src, dst in ((a, b), (b, a)):
        sent, ids, more = precopy(src, dst, "tb", rounds=1, steps_between=20)
        state, ids = final_stage(src, dst, "tb", sent + 0, ids)
        deltas += more
        dst.call("import_request", state, ids)
        src.call("remove_request", "tb")
        deltas += dst.call("steps", 15)
    deltas += a.call("run_all")
    assert collect(deltas)["tb"] == ref
    baseline(a)
    baseline(b)


def test_destination_refuses_source_keeps_running(engines):
    a, b = engines
    ref = unmigrated(a, greedy(80))
    # 1) no room: the reservation is refused before anything moves
    assert b.call("reserve_blocks", 10_000) is None
    a.call("add_request", req("r1", PROMPTS[1], greedy(80)))
    deltas = a.call("steps", 10)
    # 2) the commit is refused (a state that does not match the imported blocks)
    sent, ids, more = precopy(a, b, "r1", rounds=1, steps_between=5)
    state, ids = final_stage(a, b, "r1", sent, ids)
    bad = type(state)(**{**state.__dict__, "num_computed_tokens": 10_000})
    with pytest.raises(EngineError):
        b.call("import_request", bad, ids)
    b.call("release_blocks", ids)
    baseline(b)
    a.call("resume", "r1")
    out = collect(deltas + more + a.call("run_all"))["r1"]
    assert out == ref
    baseline(a)


def test_abort_mid_precopy_frees_both(engines):
    a, b = engines
    a.call("add_request", req("ab", PROMPTS[2], greedy(100)))
    a.call("steps", 5)
    sent, ids, _ = precopy(a, b, "ab", rounds=1, steps_between=3)
    assert sent >= 6 and len(ids) == sent
    assert b.call("load").num_blocks_used == sent  # the reservation is real vLLM usage
    assert a.call("abort_request", "ab") is True  # client abort mid-migration
    b.call("release_blocks", ids)  # the source's MigAbort
    assert a.call("run_all") == []
    baseline(a)
    baseline(b)


def test_source_suspended_then_destination_gone(engines):
    a, b = engines
    ref = unmigrated(a, greedy(90))
    a.call("add_request", req("sg", PROMPTS[1], greedy(90)))
    deltas = a.call("steps", 25)
    sent, ids, more = precopy(a, b, "sg", rounds=1, steps_between=10)
    state, ids = final_stage(a, b, "sg", sent, ids)
    assert a.call("load").requests[0].migrating is True
    # the destination dies before COMMIT: its reservation expires, the source resumes
    b.call("release_blocks", ids)
    a.call("resume", "sg")
    out = collect(deltas + more + a.call("run_all"))["sg"]
    assert out == ref
    baseline(a)
    baseline(b)


def test_imported_then_aborted_before_first_step(engines):
    """The destination committed, then the client aborted before the request's first step
    there: the pending load is dropped and the reserved blocks are freed."""
    a, b = engines
    a.call("add_request", req("ia", PROMPTS[1], greedy(60)))
    a.call("steps", 12)
    sent, ids, _ = precopy(a, b, "ia", rounds=1, steps_between=1)
    state, ids = final_stage(a, b, "ia", sent, ids)
    b.call("import_request", state, ids)
    a.call("remove_request", "ia")
    assert b.call("has_request", "ia")
    assert b.call("abort_request", "ia") is True
    assert b.call("run_all") == []
    baseline(a)
    baseline(b)


@pytest.mark.parametrize("damage", ["kv", "rng"])
def test_imported_kv_and_rng_are_really_used(engines, damage):
    """Controls: zeroed KV frames, or a dropped sampler state, change the continuation, so the
    exact-match tests above are not passing by recomputation or by luck."""
    import numpy as np

    a, b = engines
    sampling = greedy(60) if damage == "kv" else seeded(60)
    ref = unmigrated(a, sampling)
    a.call("add_request", req("d", PROMPTS[1], sampling))
    deltas = a.call("steps", 30)
    a.call("suspend", "d")
    total = len(a.call("request_block_ids", "d"))
    frames = a.call("export_blocks", "d", 0, total)
    if damage == "kv":
        frames = [np.zeros_like(frames[0])]
    ids = b.call("reserve_blocks", total)
    b.call("import_blocks", ids, frames)
    state = a.call("export_state", "d")
    if damage == "rng":
        assert state.rng_state
        state = type(state)(**{**state.__dict__, "rng_state": b""})
    b.call("import_request", state, ids)
    a.call("remove_request", "d")
    out = collect(deltas + b.call("run_all"))["d"]
    assert out[:30] == ref[:30] and out != ref
    baseline(a)
    baseline(b)
