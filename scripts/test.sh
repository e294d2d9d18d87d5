#!/usr/bin/env bash
# The whole test suite: unit tests and the cocotb/Icarus RTL regression, on both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --rtl
exec .venv/bin/python -m pytest -n 2 -q "$@"
