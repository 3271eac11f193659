"""Two `--engine vllm` workers behind our scheduler and frontend (real processes, ZeroMQ, HTTP):
greedy generation through the mesh equals vLLM's own offline LLM.generate, and a request migrated
mid-decode between the two vLLM workers (POST /admin/migrate) streams exactly the tokens of an
unmigrated run, with both KV pools whole afterwards. Token ids come back through vLLM's
``return_token_ids`` extension, which our frontend implements."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from helpers import DEVICES, PROMPTS, device_options

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ADMIN_KEY = "vllm-mesh-admin"
MAX_TOKENS = 48  # greedy comparison with LLM.generate
LONG = 400  # migrated request: long enough to move mid-decode
MOVE_AT = 24  # tokens streamed before the migration order
SERVED = "tiny-llama"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=DEVICES)
def cluster(request, tiny_model, tmp_path_factory):
    from llumnix_zmq.launch.local import ClusterSpec, LocalCluster

    logs = tmp_path_factory.mktemp("vllm-mesh")
    device = [f"--{k.replace('_', '-')}={v}" for k, v in device_options(request.param).items()]
    spec = ClusterSpec(engine="vllm", model=tiny_model, instances=2, port=_free_port(),
                       admin_key=ADMIN_KEY, enable_migration=False, log_dir=str(logs),
                       worker_args=["--num-blocks", "256", "--max-model-len", "4096",
                                    "--migration-timeout-s", "10", *device],
                       frontend_args=["--served-model-name", SERVED])
    c = LocalCluster(spec)
    c.start()
    if not c.wait_ready(400):
        c.stop()
        tails = "\n".join(p.read_text()[-3000:] for p in logs.glob("*.log"))
        raise AssertionError(f"vLLM cluster not ready\n{tails}")
    c.logs = logs
    yield c
    c.stop()


@pytest.fixture(scope="module")
def reference(tiny_model):
    from llumnix_zmq.engine.vllm.testing import reference_outputs

    return reference_outputs(tiny_model, PROMPTS, LONG)


def client(c) -> openai.OpenAI:
    return openai.OpenAI(base_url=c.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def admin(c, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(c.base_url + path, data, {
        "Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.loads(exc.read())}


def instances(c) -> list[dict]:
    return admin(c, "/admin/instances")["instances"]


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def pools_whole(c) -> bool:
    return all(i["blocks_used"] == 0 and not i["request_ids"] and not i["waiting_ids"]
               for i in instances(c))


def commits(c) -> int:
    return sum(p.read_text().count("committed on") for p in c.logs.glob("worker-*.log"))


def body(prompt, max_tokens: int, seed=None) -> dict:
    extra = {"return_token_ids": True, "ignore_eos": True}
    sampling = {"temperature": 0.0} if seed is None else \
        {"temperature": 0.8, "top_p": 0.95, "seed": seed}
    return dict(model=SERVED, prompt=prompt, max_tokens=max_tokens, extra_body=extra,
                **sampling)


def stream_ids(c, prompt, max_tokens: int, seed=None, move_at: int | None = None) -> dict:
    """Stream a completion, collecting its token ids; after ``move_at`` ids, order the request
    migrated to the other instance (the stream keeps going meanwhile)."""
    out = {"ids": [], "finish": None, "reply": None, "id": None, "from": None, "to": None}
    for chunk in client(c).completions.create(stream=True, **body(prompt, max_tokens, seed)):
        out["id"] = chunk.id
        choice = chunk.choices[0].model_dump()
        out["ids"] += choice["token_ids"]
        out["finish"] = choice["finish_reason"] or out["finish"]
        if move_at is not None and out["reply"] is None and len(out["ids"]) >= move_at:
            holder = wait_for(lambda: next((i["id"] for i in instances(c)
                                            if chunk.id in i["request_ids"]), None), 5)
            out["from"] = holder
            out["to"] = next(i["id"] for i in instances(c) if i["id"] != holder)
            out["reply"] = admin(c, "/admin/migrate", {"request_id": chunk.id,
                                                       "destination": out["to"]})
    return out


def test_two_vllm_workers_registered(cluster):
    models = [m.model_dump() for m in client(cluster).models.list().data]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(SERVED, 4096)]
    insts = instances(cluster)
    assert [i["id"] for i in insts] == ["worker-0", "worker-1"]
    assert all(i["blocks_total"] == 256 and i["state"] == "active" for i in insts), insts


def test_greedy_through_mesh_equals_llm_generate(cluster, reference):
    """Three prompts at once (spread over both workers by the scheduler), streamed and not."""
    c = client(cluster)

    def full(i):
        out = c.completions.create(**body(PROMPTS[i], MAX_TOKENS))
        return out.choices[0].model_dump()

    with ThreadPoolExecutor(3) as pool:
        choices = list(pool.map(full, range(len(PROMPTS))))
    assert [ch["token_ids"] for ch in choices] == [r[:MAX_TOKENS] for r in reference]
    assert [ch["prompt_token_ids"] for ch in choices] == PROMPTS
    assert {ch["finish_reason"] for ch in choices} == {"length"}
    streamed = stream_ids(cluster, PROMPTS[2], MAX_TOKENS)
    assert streamed["ids"] == reference[2][:MAX_TOKENS] and streamed["finish"] == "length"
    assert wait_for(lambda: pools_whole(cluster), 10)


@pytest.mark.parametrize("seed", [None, 11], ids=["greedy", "seeded"])
def test_migrated_mid_decode_continues_exactly(cluster, reference, seed):
    before = commits(cluster)
    ref = reference[1] if seed is None else stream_ids(cluster, PROMPTS[1], LONG, seed)["ids"]
    assert len(ref) == LONG
    out = stream_ids(cluster, PROMPTS[1], LONG, seed, move_at=MOVE_AT)
    assert out["reply"]["accepted"], out["reply"]
    assert out["reply"]["source"] == out["from"] and out["from"] != out["to"]
    assert out["ids"] == ref and out["finish"] == "length"
    assert wait_for(lambda: commits(cluster) == before + 1, 10)
    assert wait_for(lambda: pools_whole(cluster), 10)


def test_migration_to_unknown_instance_refused_and_request_finishes(cluster, reference):
    """An order naming no instance is refused up front; the request runs once, unmoved."""
    c = client(cluster)
    stream = c.completions.create(stream=True, **body(PROMPTS[0], MAX_TOKENS))
    first = next(iter(stream))
    reply = admin(cluster, "/admin/migrate", {"request_id": first.id, "destination": "nope"})
    assert reply["status"] == 404 and reply["error"]["code"] == "instance_not_found"
    ids = first.choices[0].model_dump()["token_ids"]
    for chunk in stream:
        ids += chunk.choices[0].model_dump()["token_ids"]
    assert ids == reference[0][:MAX_TOKENS]
    assert wait_for(lambda: pools_whole(cluster), 10)
