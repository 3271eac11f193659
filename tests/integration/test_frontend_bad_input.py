"""Bad HTTP input: OpenAI-style 4xx JSON errors, and the server keeps serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from conftest import blocks_used, expected_text, wait_for

pytestmark = pytest.mark.timeout(60)


def post(cluster, path, data: bytes, headers=None):
    req = urllib.request.Request(cluster.base_url + path, data,
                                 {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def body(**kw):
    return json.dumps({"model": "sim", "prompt": "hi", **kw}).encode()


CASES = [
    (b"{not json", 400, None),
    (b"\xff\xfe\x00garbage", 400, None),
    (b"[1, 2, 3]", 400, None),
    (json.dumps({"prompt": "hi"}).encode(), 400, "model"),
    (json.dumps({"model": "sim"}).encode(), 400, "prompt"),
    (body(model="gpt-9"), 404, "model"),
    (body(max_tokens=0), 400, "max_tokens"),
    (body(max_tokens=-5), 400, "max_tokens"),
    (body(max_tokens="ten"), 400, "max_tokens"),
    (body(max_tokens=10 ** 9), 400, "max_tokens"),
    (body(temperature="hot"), 400, "temperature"),
    (body(temperature=9.0), 400, "temperature"),
    (body(top_p=1.5), 400, "top_p"),
    (body(n=2), 400, "n"),
    (body(stream="yes"), 400, "stream"),
    (body(stop=[1, 2]), 400, "stop"),
    (body(priority="urgent"), 400, "priority"),
    (body(prompt=["a", "b"]), 400, "prompt"),
    (body(prompt=[1, -2]), 400, "prompt"),
    (body(prompt=[999999]), 400, "prompt"),
    (body(prompt="x" * 9000), 400, "prompt"),
    (body(seed=1.5), 400, "seed"),
    (("[" * 5000 + "]" * 5000).encode(), 400, None),
    (('{"model": "sim", "prompt": "hi", "x": ' + "[" * 100 + "]" * 100 + "}").encode(), 400,
     None),
]


@pytest.mark.parametrize("data,status,param", CASES)
def test_bad_completion_bodies(sim_cluster, data, status, param):
    code, out = post(sim_cluster, "/v1/completions", data)
    assert code == status, out
    assert set(out["error"]) >= {"message", "type", "param"}
    if param:
        assert out["error"]["param"] == param


def test_bad_chat_bodies(sim_cluster):
    for messages in (None, [], [{"role": "wizard", "content": "x"}], [{"role": "user"}],
                     [{"role": "user", "content": [{"type": "image_url"}]}], "hello"):
        code, out = post(sim_cluster, "/v1/chat/completions",
                         json.dumps({"model": "sim", "messages": messages}).encode())
        assert code == 400 and out["error"]["param"] == "messages", (messages, out)


def test_oversized_body_is_413(sim_cluster):
    code, out = post(sim_cluster, "/v1/completions", body(prompt="x" * (5 << 20)))
    assert code == 413 and "too large" in out["error"]["message"]


def test_admin_needs_key(sim_cluster):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(sim_cluster.base_url + "/admin/instances", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 401
    code, out = post(sim_cluster, "/admin/migrate", b"{}", {"Authorization": "Bearer nope"})
    assert code == 401


def test_still_serving_after_bad_input_and_no_leaks(sim_cluster):
    code, out = post(sim_cluster, "/v1/completions", body(max_tokens=6))
    assert code == 200 and out["choices"][0]["text"] == expected_text("hi", 6)
    assert wait_for(lambda: sum(blocks_used(sim_cluster).values()) == 0, 5)
