"""Fuzz the OpenAI HTTP API of one real cluster (scheduler, one sim worker, frontend processes):
hypothesis-built bodies for /v1/completions, /v1/chat/completions and /admin/migrate — every
field any JSON value (wrong types, nesting, huge numbers, unicode incl. lone surrogates), raw
bytes (invalid UTF-8), deep nesting, bodies over the 4 MiB limit.

Contract for every response:

| status | body                                                                       |
|--------|----------------------------------------------------------------------------|
| 200    | a valid OpenAI object (or SSE stream ending in [DONE]); the exact sim text |
|        | where the request is simple enough to predict                              |
| 409    | /admin/migrate only: {"accepted": false, ...}                              |
| 4xx    | JSON with an "error" object carrying a string "message"                    |
| 5xx    | never                                                                      |

After each test the cluster still serves a valid request with the exact text and every KV
block is free again."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st


def _load_cluster_helpers():
    path = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_integration_cluster_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_helpers = _load_cluster_helpers()
ADMIN_KEY, TOK = _helpers.ADMIN_KEY, _helpers.TOK
admin_get, blocks_used, expected_text = (_helpers.admin_get, _helpers.blocks_used,
                                         _helpers.expected_text)
start_cluster, wait_for = _helpers.start_cluster, _helpers.wait_for

pytestmark = pytest.mark.timeout(300)
N = int(os.environ.get("LLUMNIX_FUZZ_EXAMPLES", 60))
FUZZ = settings(max_examples=N, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_BODY = 4 << 20
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("httpfuzz"), instances=1, time_scale=0.1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def instance_ids(cluster):
    return [i["id"] for i in admin_get(cluster, "/admin/instances")["instances"]]


# --------------------------------------------------------------------------- client


def post(cluster, path: str, data: bytes, headers=None) -> tuple[int, str, bytes]:
    """(status, content type, body); a server that hangs up on a huge body counts as 413 only
    if it answered first, so a reset there is re-raised."""
    host, port = cluster.base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def check_error(status: int, body: bytes) -> dict:
    assert 400 <= status < 500, (status, body[:300])
    obj = json.loads(body)
    assert isinstance(obj, dict) and isinstance(obj.get("error"), dict), obj
    assert isinstance(obj["error"]["message"], str) and obj["error"]["message"]
    return obj


def check_response(status: int, ctype: str, body: bytes, chat: bool) -> str | None:
    """The contract above for /v1/*; the generated text of a 200."""
    assert status < 500, (status, body[:500])
    if currently_in_test_context():
        event(f"HTTP {status}")
    if status != 200:
        check_error(status, body)
        return None
    if ctype.startswith("text/event-stream"):
        return check_sse(body, chat)
    obj = json.loads(body)
    assert obj["object"] == ("chat.completion" if chat else "text_completion")
    assert obj["model"] == "sim" and obj["id"]
    (choice,) = obj["choices"]
    assert choice["finish_reason"] in ("stop", "length")
    text = choice["message"]["content"] if chat else choice["text"]
    assert isinstance(text, str)
    usage = obj["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] >= 1
    return text


def check_sse(body: bytes, chat: bool) -> str:
    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", body[-300:]
    text, finish = "", None
    for raw in events[:-1]:
        obj = json.loads(raw)
        assert "error" not in obj, obj
        assert obj["object"] == ("chat.completion.chunk" if chat else "text_completion")
        for choice in obj["choices"]:
            text += (choice["delta"].get("content") or "") if chat else choice["text"]
            finish = choice["finish_reason"] or finish
    assert finish in ("stop", "length")
    return text


def assert_still_serving(cluster) -> None:
    """A valid request returns the exact text, and no KV block stays used."""
    data = json.dumps({"model": "sim", "prompt": "still there?", "max_tokens": 6,
                       "seed": 3}).encode()
    status, ctype, body = post(cluster, "/v1/completions", data)
    assert check_response(status, ctype, body, chat=False) == expected_text("still there?", 6, 3)
    used = wait_for(lambda: not any(blocks_used(cluster).values()) or None, 10)
    assert used, f"KV blocks still used: {blocks_used(cluster)}"


# --------------------------------------------------------------------------- strategies

# every Unicode category, lone surrogates included (json.dumps escapes them; json.loads in the
# server gives them back as str)
unicode_text = st.text(st.characters(codec=None, categories=None), max_size=12) \
    | st.sampled_from(["", "\ud800", "a\udfffb", "\x00", "é漢🙂", "\u202e"])
huge_ints = st.integers(-(1 << 70), 1 << 70)
leaves = (st.none() | st.booleans() | huge_ints | st.integers(-3, 9)
          | st.floats(allow_nan=True, allow_infinity=True) | unicode_text)
json_values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(unicode_text, kids, max_size=4), max_leaves=12)
# max_tokens is never absent/None (the default would generate up to the context length)
max_tokens = st.integers(1, 8) | st.integers(-3, 0) | st.integers(8193, 1 << 70) \
    | json_values.filter(lambda v: v is not None and not isinstance(v, int))
models = st.just("sim") | st.sampled_from(["", "gpt-4", "SIM", "sim "]) | json_values
prompts = (st.text(max_size=20) | unicode_text
           | st.lists(st.integers(0, 255), min_size=1, max_size=6)
           | st.lists(st.integers(-2, 300) | huge_ints, max_size=6)
           | st.lists(unicode_text, max_size=2) | json_values)
# each field: mostly a valid value, else anything
common = {
    "temperature": st.floats(0, 2) | st.floats(-1, 3) | json_values,
    "top_p": st.floats(0, 1) | st.floats(-1, 2) | json_values,
    "stop": st.none() | unicode_text | st.lists(unicode_text, max_size=5) | json_values,
    "seed": st.none() | st.integers(-(1 << 63), (1 << 63) - 1) | huge_ints | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()
                                                          | json_values}) | json_values,
    "n": st.just(1) | st.integers(-1, 3) | json_values,
    "ignore_eos": st.booleans() | json_values,
    "priority": st.sampled_from(["normal", "high", "urgent"]) | json_values,
    "logprobs": json_values,
    "unknown_field": json_values,
}


@st.composite
def mostly_valid(draw, base: dict, fields: dict):
    """``base`` (a valid body) with a few fields replaced, added or removed."""
    body = dict(base)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        body[name] = draw(fields[name])
    for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=1)):
        if name != "max_tokens":
            body.pop(name, None)
    return body


completion_bodies = st.builds(
    lambda p, n: {"model": "sim", "prompt": p, "max_tokens": n},
    st.text(min_size=1, max_size=12), st.integers(1, 6),
).flatmap(lambda base: mostly_valid(base, {"model": models, "prompt": prompts,
                                           "max_tokens": max_tokens, **common}))
message = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "root"])
    | json_values,
    "content": unicode_text | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]) | json_values,
         "text": unicode_text | json_values}), max_size=2) | json_values,
    "name": json_values,
}) | json_values
chat_bodies = st.builds(
    lambda c, n: {"model": "sim", "messages": [{"role": "user", "content": c}], "max_tokens": n},
    st.text(min_size=1, max_size=12), st.integers(1, 6),
).flatmap(lambda base: mostly_valid(base, {
    "model": models, "messages": st.lists(message, max_size=3) | json_values,
    "max_tokens": max_tokens, "max_completion_tokens": max_tokens, **common}))


def _simple_completion(body: dict) -> bool:
    return (body.get("model") == "sim" and isinstance(body.get("prompt"), str)
            and body.get("stop") in (None, []) and isinstance(body.get("max_tokens"), int)
            and not isinstance(body.get("max_tokens"), bool))


# --------------------------------------------------------------------------- tests


@FUZZ
@given(body=completion_bodies)
def test_completions_random_json_fields(cluster, body):
    status, ctype, raw = post(cluster, "/v1/completions", json.dumps(body).encode())
    text = check_response(status, ctype, raw, chat=False)
    if text is not None and _simple_completion(body):
        seed = body.get("seed")
        assert text == expected_text(body["prompt"], body["max_tokens"], seed)


@FUZZ
@given(body=chat_bodies)
def test_chat_completions_random_json_fields(cluster, body):
    status, ctype, raw = post(cluster, "/v1/chat/completions", json.dumps(body).encode())
    text = check_response(status, ctype, raw, chat=True)
    msgs = body.get("messages")
    if text is not None and isinstance(msgs, list) and len(msgs) == 1 \
            and msgs[0].get("role") == "user" and isinstance(msgs[0].get("content"), str) \
            and body.get("stop") in (None, []) and "max_completion_tokens" not in body:
        assert text == expected_text(msgs[0]["content"], body["max_tokens"], body.get("seed"),
                                     chat=True)


@settings(FUZZ, max_examples=max(1, N // 2))
@given(data=st.binary(max_size=64) | unicode_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
       path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/admin/migrate"]))
def test_raw_bytes_bodies(cluster, data, path):
    status, ctype, raw = post(cluster, path, data, ADMIN)
    check_response(status, ctype, raw, chat=path.endswith("chat/completions"))


def migrate_bodies(ids):
    names = st.sampled_from(ids) | unicode_text | json_values
    return st.fixed_dictionaries({}, optional={
        "destination": names, "source": names, "request_id": unicode_text | json_values,
        "num_requests": st.integers(-2, 4) | huge_ints | json_values}) | json_values


@settings(FUZZ, max_examples=max(1, N // 2))
@given(data=st.data())
def test_admin_migrate_random_bodies(cluster, instance_ids, data):
    body = data.draw(migrate_bodies(instance_ids))
    status, ctype, raw = post(cluster, "/admin/migrate", json.dumps(body).encode(), ADMIN)
    assert status < 500, (status, raw[:300])
    if status in (200, 409):
        obj = json.loads(raw)
        assert obj["accepted"] is (status == 200) and isinstance(obj["reason"], str)
        assert isinstance(obj["request_ids"], list)
    else:
        check_error(status, raw)


FOUND = [  # (path, body, status): what this fuzzer found answered with 5xx before the fixes
    ("/v1/completions", {"model": "sim", "prompt": "a\ud800", "max_tokens": 2}, 400),
    ("/v1/chat/completions", {"model": "sim", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "\udfff"}]}, 400),
    ("/admin/migrate", {"destination": "worker-0", "source": "worker-0",
                        "num_requests": 1 << 70}, 400),
]


@pytest.mark.parametrize("path,body,status", FOUND)
def test_found_cases_get_4xx(cluster, path, body, status):
    got, _, raw = post(cluster, path, json.dumps(body).encode(), ADMIN)
    assert got == status and check_error(got, raw)


DEEP = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"model": "sim", "prompt": "hi", "max_tokens": 2, "x": ' + b"[" * 65 + b"]" * 65 + b"}",
    b"[" * 100_000,  # never closed
]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/admin/migrate"])
def test_deeply_nested_and_oversized_bodies(cluster, path):
    for data in DEEP:
        status, _, raw = post(cluster, path, data, ADMIN)
        assert check_error(status, raw) and status == 400
    body = json.dumps({"model": "sim", "prompt": "x" * MAX_BODY, "max_tokens": 2}).encode()
    status, _, raw = post(cluster, path, body, ADMIN)
    assert status == 413 and check_error(status, raw)
    assert_still_serving(cluster)


def test_still_serving_after_fuzz(cluster):
    """Runs last in this module: the fuzzed cluster serves exact text and leaked no block."""
    assert_still_serving(cluster)
    chat = json.dumps({"model": "sim", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    status, ctype, raw = post(cluster, "/v1/chat/completions", chat)
    assert check_response(status, ctype, raw, chat=True) == expected_text("hello", 5, chat=True)
