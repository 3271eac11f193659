#!/usr/bin/env bash
# Set up .venv and start a local cluster answering OpenAI requests on http://127.0.0.1:8000/v1
# (two workers running SmolLM2-135M-Instruct on the CPU). Extra flags go to `llumnix-zmq up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec llumnix-zmq up --engine torch --model smollm2 --instances 2 --port 8000 "$@"
