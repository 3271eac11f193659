#!/usr/bin/env bash
# Set up .venv-vllm (scripts/setup_vllm.sh) and run the vllm-marked tests in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/vllm_engine "$@"
