"""vLLM engine tests: run in .venv-vllm (scripts/test_vllm.sh); skipped where vllm is absent.

Two engines (one OpenMP core each) and one reference run share a tiny random Llama built once
per session. Engines start once per session (~30 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import DEVICES, PLATFORM, device_options  # noqa: E402  (after the path insert)

HAVE_VLLM = bool(PLATFORM)

NUM_BLOCKS = 256  # per engine: 8192 tokens of KV


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: needs vLLM (run in .venv-vllm)")


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    skip = pytest.mark.skip(reason="vllm is not installed (scripts/test_vllm.sh)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from llumnix_zmq.engine.vllm.tiny import build_tiny_llama

    return build_tiny_llama(str(tmp_path_factory.mktemp("vllm") / "tiny-llama"))


@pytest.fixture(scope="session", params=DEVICES)
def engines(request, tiny_model):
    from llumnix_zmq.engine.vllm.testing import EngineProc

    opts = dict(num_blocks=NUM_BLOCKS, max_model_len=4096, **device_options(request.param))
    a = EngineProc(tiny_model, "0", **opts)
    try:
        b = EngineProc(tiny_model, "1", **opts)
    except BaseException:
        a.close()
        raise
    yield a, b
    a.close()
    b.close()
