"""Serving through our Engine interface over vLLM equals vLLM's own offline LLM.generate."""

from __future__ import annotations

import pytest

from helpers import PROMPTS, baseline, collect, greedy, req
from llumnix_zmq.engine.base import EngineError
from llumnix_zmq.protocol.messages import FinishReason, Priority, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def reference(tiny_model):
    from llumnix_zmq.engine.vllm.testing import reference_outputs

    return reference_outputs(tiny_model, PROMPTS, MAX_TOKENS)


def test_greedy_equals_llm_generate(engines, reference):
    a, _ = engines
    for i, p in enumerate(PROMPTS):
        a.call("add_request", req(f"g{i}", p, greedy(MAX_TOKENS)))
    deltas = a.call("run_all")
    out = collect(deltas)
    assert [out[f"g{i}"] for i in range(len(PROMPTS))] == reference
    finals = {d.request_id: d.finish_reason for d in deltas if d.finish_reason}
    assert set(finals.values()) == {FinishReason.LENGTH}
    assert all(d.num_prompt_tokens == len(PROMPTS[int(d.request_id[1:])]) for d in deltas)
    baseline(a)


def test_second_engine_agrees_and_resumes_from_outputs(engines, reference):
    """A request re-submitted with its first k outputs continues with exactly the rest
    (the recompute path a migration of a queued request uses)."""
    _, b = engines
    ref = reference[1]
    b.call("add_request", req("r", PROMPTS[1], greedy(MAX_TOKENS), output_token_ids=ref[:10]))
    deltas = b.call("run_all")
    assert deltas[0].start_index == 10
    assert collect(deltas, {"r": ref[:10]})["r"] == ref
    baseline(b)


def test_load_reports_vllm_blocks(engines):
    a, _ = engines
    a.call("add_request", req("l1", PROMPTS[2], greedy(8)))
    a.call("add_request", req("l2", PROMPTS[0], greedy(8), priority=Priority.HIGH))
    waiting = a.call("load")
    assert waiting.num_waiting == 2 and waiting.num_running == 0 and waiting.num_blocks_used == 0
    assert {r.request_id: (r.running, r.num_blocks) for r in waiting.requests} == \
        {"l1": (False, 7), "l2": (False, 1)}
    a.call("steps", 1)
    load = a.call("load")
    assert load.num_running == 2 and load.block_size == 32
    per = {r.request_id: r for r in load.requests}
    assert per["l1"].num_blocks == len(a.call("request_block_ids", "l1")) == 7
    assert per["l2"].priority == Priority.HIGH and per["l2"].num_blocks == 1
    assert load.num_blocks_used == 8 == load.num_blocks_total - a.call("num_free_blocks")
    a.call("run_all")
    baseline(a)


def test_abort_frees_blocks_and_stops_output(engines):
    a, _ = engines
    a.call("add_request", req("x", PROMPTS[1], greedy(200)))
    a.call("add_request", req("q", PROMPTS[0], greedy(5)))
    first = a.call("steps", 3)
    assert a.call("abort_request", "x") is True
    assert a.call("abort_request", "x") is False
    rest = a.call("run_all")
    out = collect(first + rest)
    assert len(out["x"]) == 3 and len(out["q"]) == 5
    assert all(d.request_id == "q" for d in rest)
    baseline(a)


def test_stop_token_and_bad_requests(engines, reference):
    a, _ = engines
    ref = reference[0]
    stop = ref[5]
    first = ref.index(stop)
    a.call("add_request", req("s", PROMPTS[0], greedy(MAX_TOKENS, stop_token_ids=(stop,))))
    deltas = a.call("run_all")
    assert collect(deltas)["s"] == ref[:first + 1]
    assert deltas[-1].finish_reason == FinishReason.STOP
    with pytest.raises(EngineError):
        a.call("add_request", req("e", [], greedy(4)))
    with pytest.raises(EngineError):
        a.call("add_request", req("big", [5] * 5000, greedy(4)))
    a.call("add_request", req("d", PROMPTS[0], greedy(4)))
    with pytest.raises(EngineError):
        a.call("add_request", req("d", PROMPTS[0], greedy(4)))
    a.call("run_all")
    baseline(a)


def test_seeded_sampling_is_reproducible(engines):
    a, b = engines
    s = SamplingParams(max_tokens=30, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    a.call("add_request", req("z", PROMPTS[1], s))
    b.call("add_request", req("z", PROMPTS[1], s))
    za, zb = collect(a.call("run_all"))["z"], collect(b.call("run_all"))["z"]
    assert za == zb and len(za) == 30
    assert za != collect_greedy(a, PROMPTS[1], 30)


def collect_greedy(eng, prompt, n):
    eng.call("add_request", req("zg", prompt, greedy(n)))
    return collect(eng.call("run_all"))["zg"]
