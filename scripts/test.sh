#!/usr/bin/env bash
# The whole test suite: unit tests and the cocotb RTL regression (Verilator, a small set on
# Icarus; ZEROSKIP_SIM=icarus moves the rest to Icarus too), on both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --rtl
# the suite's cases are small: Verilator builds at -O0 (faster to build, as fast to run)
export ZEROSKIP_VERILATOR_OPT="${ZEROSKIP_VERILATOR_OPT:--O0}"
exec .venv/bin/python -m pytest -n 2 -q "$@"
