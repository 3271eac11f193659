"""Greedy tokens do not depend on the batch around a request, chunking, or preemption."""

from __future__ import annotations

import random

import pytest

from llumnix_zmq.engine.base import EngineError, EngineRequest
from llumnix_zmq.protocol.messages import FinishReason, Priority, SamplingParams

from torch_engine_helpers import assert_clean, byte_prompt, drain, greedy, run, tiny_engine


def _requests(seed: int = 0, n: int = 16) -> list[EngineRequest]:
    rng = random.Random(seed)
    return [
        EngineRequest(f"r{i}", byte_prompt(rng, rng.randint(1, 90)), greedy(rng.randint(3, 40)))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def alone() -> dict[str, list[int]]:
    """Each request run by itself in a fresh engine."""
    out = {}
    for r in _requests():
        eng = tiny_engine()
        out.update(run(eng, [r]))
        assert_clean(eng)
    return out


@pytest.mark.parametrize("chunked,budget", [(True, 32), (True, 512), (False, 128)])
def test_batch_of_16_matches_alone(alone, chunked, budget):
    eng = tiny_engine(enable_chunked_prefill=chunked, max_num_batched_tokens=budget)
    assert run(eng, _requests()) == alone
    assert_clean(eng)


def test_preemption_and_recompute_match_alone(alone):
    eng = tiny_engine(num_blocks=40, max_num_batched_tokens=48)
    stats: dict = {}
    for r in _requests():
        eng.add_request(r)
    out = drain(eng, {}, stats=stats)
    assert stats["preempted"] > 0
    assert out == alone
    assert_clean(eng)


def test_max_batch_size_and_budget_are_respected():
    eng = tiny_engine(max_batch_size=3, max_num_batched_tokens=16)
    for r in _requests(n=6):
        eng.add_request(r)
    while eng.has_work():
        res = eng.step()
        assert len(eng.sched.running) <= 3
        assert res.num_prefill_tokens + res.num_decode_tokens <= 16
        assert res.duration_s > 0
    assert_clean(eng)


def test_high_priority_is_admitted_first():
    eng = tiny_engine(max_batch_size=1)
    eng.add_request(EngineRequest("low", [256, 65, 66], greedy(2)))
    eng.add_request(EngineRequest("high", [256, 67], greedy(2), priority=Priority.HIGH))
    first = eng.step()
    assert [d.request_id for d in first.deltas] == ["high"]
    drain(eng, {"high": list(first.deltas[0].token_ids)})
    assert_clean(eng)


def test_eos_stop_ids_and_max_model_len():
    eng = tiny_engine(max_model_len=20)
    probe = run(eng, [EngineRequest("p", [256, 70, 71], greedy(5))])["p"]
    # the first generated token as a stop id ends the request at once
    stop = SamplingParams(max_tokens=5, stop_token_ids=(probe[0],))
    eng.add_request(EngineRequest("s", [256, 70, 71], stop))
    res = eng.step()
    assert res.deltas[0].finish_reason == FinishReason.STOP
    assert res.deltas[0].token_ids == (probe[0],)
    # max_model_len: 18 prompt tokens + 2 outputs = 20
    out = run(eng, [EngineRequest("m", [256] + [80] * 17, greedy(100))])
    assert len(out["m"]) == 2
    eng.add_request(EngineRequest("e", [256, 70, 71], SamplingParams(max_tokens=1)))
    assert eng.step().deltas[0].finish_reason == FinishReason.LENGTH
    assert_clean(eng)


def test_eos_token_finishes_with_stop():
    eng = tiny_engine()
    eng.eos_token_ids = tuple(range(259))  # every token is EOS
    eng.add_request(EngineRequest("a", [256, 65], SamplingParams(max_tokens=9)))
    d = eng.step().deltas[0]
    assert d.finish_reason == FinishReason.STOP and len(d.token_ids) == 1
    assert_clean(eng)


def test_bad_requests_raise_engine_error():
    eng = tiny_engine(num_blocks=8, max_model_len=64)
    eng.add_request(EngineRequest("a", [256, 65], greedy(2)))
    with pytest.raises(EngineError):
        eng.add_request(EngineRequest("a", [256, 65], greedy(2)))  # duplicate
    for bad in ([], [256, 999], [256] * 64, [256] * 40):  # empty, vocab, length, blocks
        with pytest.raises(EngineError):
            eng.add_request(EngineRequest("b", bad, greedy(2)))
    assert eng.abort_request("a") and not eng.abort_request("a")
    with pytest.raises(EngineError):
        eng.request_block_ids("a")
    assert_clean(eng)


def test_abort_mid_run_frees_blocks_and_load_reports():
    eng = tiny_engine()
    reqs = _requests(n=4)
    for r in reqs:
        eng.add_request(r)
    eng.step()
    load = eng.load()
    assert load.num_running + load.num_waiting == 4
    assert load.num_blocks_used == sum(len(eng.request_block_ids(r.request_id)) for r in reqs)
    assert {rl.request_id for rl in load.requests} == {r.request_id for r in reqs}
    for r in reqs:
        assert eng.abort_request(r.request_id)
    assert not eng.has_work()
    assert_clean(eng)


def test_sampling_is_seeded_and_reproducible():
    sp = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, ignore_eos=True)
    reqs = lambda: [EngineRequest("x", [256, 72, 105], sp), EngineRequest("y", [256, 72, 105], sp)]
    a, b = run(tiny_engine(), reqs()), run(tiny_engine(), reqs())
    assert a == b
    assert a["x"] != a["y"]  # seed None → derived from the request id
    sp7 = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, ignore_eos=True, seed=7)
    c = run(tiny_engine(), [EngineRequest("x", [256, 72, 105], sp7),
                            EngineRequest("y", [256, 72, 105], sp7)])
    assert c["x"] == c["y"]


def test_preempted_mid_decode_recomputes_prompt_and_outputs():
    rng = random.Random(5)
    a = EngineRequest("a", byte_prompt(rng, 10), greedy(20))
    b = EngineRequest("b", byte_prompt(rng, 10), greedy(20))
    alone = {**run(tiny_engine(), [a]), **run(tiny_engine(), [b])}
    eng = tiny_engine(num_blocks=10)  # 40 slots: both fit at first, not at full length
    for r in (a, b):
        eng.add_request(r)
    out: dict[str, list[int]] = {"a": [], "b": []}
    preempted_with = None
    while eng.has_work():
        res = eng.step()
        for d in res.deltas:
            assert d.start_index == len(out[d.request_id])
            out[d.request_id].extend(d.token_ids)
        if res.num_preempted and preempted_with is None:
            seq = eng.sched.seqs["b"]  # the later arrival is the victim
            assert eng.request_block_ids("b") == [] and seq.num_computed == 0
            preempted_with = len(seq.output)
        eng.allocator_check()
    assert preempted_with and preempted_with > 0  # it had decoded before losing its blocks
    assert out == alone
    assert_clean(eng)


def _priority_preemption(priority_preemption: bool):
    """n1, n2 (6 tokens, 2 blocks each) fill 4 of 5 blocks; then h (HIGH, 8 tokens) arrives."""
    rng = random.Random(3)
    reqs = [EngineRequest("n1", byte_prompt(rng, 6), greedy(4)),
            EngineRequest("n2", byte_prompt(rng, 6), greedy(4)),
            EngineRequest("h", byte_prompt(rng, 8), greedy(2), priority=Priority.HIGH)]
    alone = {r.request_id: run(tiny_engine(), [r])[r.request_id] for r in reqs}
    eng = tiny_engine(num_blocks=5, priority_preemption=priority_preemption)
    eng.add_request(reqs[0])
    eng.add_request(reqs[1])
    out: dict[str, list[int]] = {}
    first = eng.step()
    assert [d.request_id for d in first.deltas] == ["n1", "n2"] and eng.num_free_blocks() == 1
    for d in first.deltas:
        out[d.request_id] = list(d.token_ids)
    eng.add_request(reqs[2])
    second = eng.step()
    for d in second.deltas:
        out.setdefault(d.request_id, []).extend(d.token_ids)
    return eng, alone, out, second


def test_high_priority_preempts_lower_priority_to_be_admitted():
    eng, alone, out, second = _priority_preemption(True)
    # h needs 2 blocks, 1 is free: n2 (the last running) is preempted, its decode leaves the
    # plan, and h is prefilled in the same step
    assert second.num_preempted == 1 and [d.request_id for d in second.deltas] == ["n1", "h"]
    assert eng.sched.seqs["n2"].blocks == [] and eng.sched.seqs["n2"].output == out["n2"]
    out = drain(eng, out)
    assert out == alone  # n2 recomputed: the same greedy tokens
    assert_clean(eng)


def test_without_priority_preemption_high_waits():
    eng, alone, out, second = _priority_preemption(False)
    assert second.num_preempted == 0 and [d.request_id for d in second.deltas] == ["n1", "n2"]
    assert eng.sched.waiting[0].request_id == "h"
    out = drain(eng, out)
    assert out == alone
    assert_clean(eng)
