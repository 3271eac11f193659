"""Step 1 end to end: `up`-style cluster of two sim workers, the official openai client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from conftest import TOK, blocks_used, expected_text, wait_for
from llumnix_zmq.engine.sim import pseudo_tokens

pytestmark = pytest.mark.timeout(120)


def client(cluster, cls=openai.OpenAI):
    return cls(base_url=cluster.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_completion_non_streaming_exact(sim_cluster):
    out = client(sim_cluster).completions.create(model="sim", prompt="hello", max_tokens=12,
                                                 temperature=0)
    assert out.choices[0].text == expected_text("hello", 12)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (6, 12)
    assert out.id.startswith("cmpl-")


def test_completion_streaming_exact(sim_cluster):
    stream = client(sim_cluster).completions.create(model="sim", prompt="stream me",
                                                    max_tokens=20, stream=True,
                                                    stream_options={"include_usage": True})
    texts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(texts) == expected_text("stream me", 20)
    assert finish == "length"
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 20)


def test_chat_streaming_and_not(sim_cluster):
    c = client(sim_cluster)
    messages = [{"role": "user", "content": "hi there"}]
    want = expected_text("hi there", 9, chat=True)
    out = c.chat.completions.create(model="sim", messages=messages, max_tokens=9)
    assert out.choices[0].message.content == want
    assert out.choices[0].message.role == "assistant"
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(model="sim", messages=messages, max_tokens=9,
                                       stream=True) if ch.choices]
    assert "".join(parts) == want


def test_stop_string_truncates_and_frees(sim_cluster):
    full = expected_text("stopper", 40)
    stop = full[10:13]
    cut = full.index(stop)
    out = client(sim_cluster).completions.create(model="sim", prompt="stopper", max_tokens=40,
                                                 stop=[stop])
    assert out.choices[0].text == full[:cut]
    assert out.choices[0].finish_reason == "stop"
    assert wait_for(lambda: sum(blocks_used(sim_cluster).values()) == 0, 5)


def test_seeded_requests_differ_by_seed(sim_cluster):
    c = client(sim_cluster)
    a = c.completions.create(model="sim", prompt="x", max_tokens=8, seed=1).choices[0].text
    b = c.completions.create(model="sim", prompt="x", max_tokens=8, seed=2).choices[0].text
    assert a == expected_text("x", 8, seed=1) and b == expected_text("x", 8, seed=2)
    assert a != b


def test_models_and_health(sim_cluster):
    models = client(sim_cluster).models.list()
    assert [m.id for m in models.data] == ["sim"]


def test_100_concurrent_requests_exact(sim_cluster):
    async def one(c, i):
        prompt, n = f"request number {i}", 5 + i % 30
        if i % 2:
            out = await c.completions.create(model="sim", prompt=prompt, max_tokens=n)
            return prompt, n, out.choices[0].text
        stream = await c.completions.create(model="sim", prompt=prompt, max_tokens=n,
                                            stream=True)
        text = "".join([ch.choices[0].text async for ch in stream if ch.choices])
        return prompt, n, text

    async def main():
        async with client(sim_cluster, openai.AsyncOpenAI) as c:
            return await asyncio.gather(*(one(c, i) for i in range(100)))

    results = asyncio.run(main())
    assert len(results) == 100
    for prompt, n, text in results:
        assert text == expected_text(prompt, n), prompt
    assert wait_for(lambda: sum(blocks_used(sim_cluster).values()) == 0, 5)
    # both instances served some of the load
    metrics = __import__("urllib.request").request.urlopen(sim_cluster.base_url + "/metrics").read()
    assert b"llumnix_frontend_ttft_seconds_count" in metrics


def test_return_token_ids_streaming_and_not(sim_cluster):
    """vLLM's ``return_token_ids`` extension: prompt ids once, then every output id exactly once
    across the chunks (the sim engine's pseudo tokens, known in advance)."""
    prompt_ids = TOK.encode("ids please")
    want = pseudo_tokens(prompt_ids, None, 0, 15)
    c = client(sim_cluster)
    extra = {"return_token_ids": True}
    out = c.completions.create(model="sim", prompt="ids please", max_tokens=15, temperature=0,
                               extra_body=extra)
    choice = out.choices[0].model_dump()
    assert choice["token_ids"] == want and choice["prompt_token_ids"] == prompt_ids
    chat = c.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                     max_tokens=4, extra_body=extra).model_dump()
    assert len(chat["choices"][0]["token_ids"]) == 4 and chat["prompt_token_ids"]
    ids, prompts = [], []
    for chunk in c.completions.create(model="sim", prompt="ids please", max_tokens=15,
                                      stream=True, extra_body=extra):
        d = chunk.choices[0].model_dump()
        ids += d["token_ids"]
        prompts += [d["prompt_token_ids"]] if d.get("prompt_token_ids") else []
    assert ids == want and prompts == [prompt_ids]
    plain = c.completions.create(model="sim", prompt="ids please", max_tokens=3)
    assert "token_ids" not in plain.choices[0].model_dump()


def _counter(text: str, name: str, label: str) -> float:
    import re

    m = re.search(rf'{name}{{outcome="{label}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_dispatch_tickets_serve_back_to_back_requests_exactly(sim_cluster):
    """Requests in quick succession take the scheduler's pre-fetched decision (a ticket) instead
    of a round trip; the outputs are exact and no blocks are left behind."""
    import urllib.request

    def metrics() -> str:
        return urllib.request.urlopen(sim_cluster.base_url + "/metrics").read().decode()

    name = "llumnix_frontend_dispatch_tickets_total"
    before = _counter(metrics(), name, "hit")
    c = client(sim_cluster)
    for i in range(12):
        prompt = f"ticket {i}"
        out = c.completions.create(model="sim", prompt=prompt, max_tokens=3, temperature=0)
        assert out.choices[0].text == expected_text(prompt, 3)
    after = metrics()
    assert _counter(after, name, "hit") - before >= 6
    assert wait_for(lambda: sum(blocks_used(sim_cluster).values()) == 0, 5)
