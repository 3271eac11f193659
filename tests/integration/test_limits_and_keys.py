"""Admission control (429 + Retry-After) and REST API keys, with real processes."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from conftest import blocks_used, expected_text, start_cluster, wait_for

pytestmark = pytest.mark.timeout(90)


def test_per_client_and_global_limits_answer_429(tmp_path):
    cluster = start_cluster(tmp_path, instances=1, time_scale=1.0,
                            frontend_args=["--max-requests-per-client", "2",
                                           "--max-concurrent-requests", "3"])
    try:
        async def main():
            url = cluster.base_url + "/v1/completions"
            async with aiohttp.ClientSession() as s:
                long = [asyncio.create_task(s.post(url, json={"model": "sim", "prompt": f"a{i}",
                                                              "max_tokens": 60}))
                        for i in range(2)]
                await asyncio.sleep(0.3)
                r = await s.post(url, json={"model": "sim", "prompt": "third", "max_tokens": 2})
                third = (r.status, r.headers.get("Retry-After"), (await r.json())["error"])
                done = [await (await t).json() for t in long]
                return third, done

        (status, retry, err), done = asyncio.run(main())
        assert (status, retry, err["code"], err["type"]) == \
            (429, "1", "too_many_requests", "rate_limit_error")
        assert [d["choices"][0]["text"] for d in done] == \
            [expected_text("a0", 60), expected_text("a1", 60)]
        assert wait_for(lambda: sum(blocks_used(cluster).values()) == 0, 5)
    finally:
        cluster.stop()


def test_api_keys_required_when_configured(tmp_path):
    cluster = start_cluster(tmp_path, instances=1, time_scale=0.2,
                            api_keys=["key-one", "key-two"])
    try:
        for key in ("", "wrong"):
            c = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key=key or "none",
                              max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                c.completions.create(model="sim", prompt="x", max_tokens=2)
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
        for key in ("key-one", "key-two"):
            c = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key=key, max_retries=0)
            out = c.completions.create(model="sim", prompt="x", max_tokens=3)
            assert out.choices[0].text == expected_text("x", 3)
    finally:
        cluster.stop()


def test_a_small_body_limit_holds_for_bodies_that_arrive_whole(tmp_path):
    """The frontend takes a body that is already buffered without aiohttp's read(); the limit
    still holds: over it a 413, at it an answer."""
    cluster = start_cluster(tmp_path, instances=1, time_scale=0.2,
                            frontend_args=["--max-body-bytes", "120"])
    try:
        async def main():
            url = cluster.base_url + "/v1/completions"
            async with aiohttp.ClientSession() as s:
                body = {"model": "sim", "prompt": "x" * 200, "max_tokens": 2}
                r = await s.post(url, json=body)
                big = (r.status, (await r.json())["error"]["message"])
                r = await s.post(url, json={"model": "sim", "prompt": "hi", "max_tokens": 2})
                return big, r.status, (await r.json())["choices"][0]["text"]

        big, status, text = asyncio.run(main())
        assert big == (413, "request body too large")
        assert (status, text) == (200, expected_text("hi", 2))
    finally:
        cluster.stop()
