"""Verilator lint of the generated Verilog: ``lint(vpath, top)`` runs
``verilator --lint-only -Wall`` with the waivers below, and nothing else is waived.

Every waiver is a whole rule and exists because of how Amaranth and Yosys write Verilog, not
because of a defect in a block; each one names why it is safe. The RTL tests (bit-exact
against the integer reference) cover what these rules would otherwise catch.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# rule -> why it is waived
WAIVERS = {
    "UNUSEDSIGNAL": (
        "Amaranth keeps a named wire for every field of a structured signal (for example "
        "'cmd__payload.requant.bias[0]') so waveforms show the fields; nothing reads these "
        "aliases. Yosys also keeps the full-width intermediate of an expression whose top bits "
        "are truncated by the assignment. The AXI slaves ignore 'tlast' and the zero padding "
        "of 'tdata' above the payload by design (hw/axi.py)."),
    "WIDTH": (
        "Yosys's Verilog writer relies on Verilog's context-determined widths: it writes, for "
        "example, a 49-bit signed product added in a 66-bit context and lets the language "
        "extend it. The extension is the intended one (Amaranth's own width rules); the RTL "
        "tests check every output bit-exactly."),
    "CASEINCOMPLETE": (
        "Amaranth decodes an FSM state register with a 'casez' over the reachable encodings "
        "only; unreachable encodings are never assigned to the state register."),
    "LITENDIAN": (
        "Yosys writes a zero-width Amaranth signal (a field that a configuration sizes to "
        "nothing) as 'wire [-1:0]'; it is never read or driven."),
    "DECLFILENAME": (
        "Amaranth writes the whole hierarchy into one file and names submodules "
        "'<top>.<submodule>', so module names cannot all match the file name."),
}

VERILATOR_HINT = ("verilator is not on PATH: install it with 'apt-get install -y verilator' "
                  "(scripts/setup.sh --rtl does this)")


def waiver_file(path) -> Path:
    """Write the waivers as a Verilator configuration file (``.vlt``)."""
    path = Path(path)
    lines = ["`verilator_config"]
    for rule, why in WAIVERS.items():
        lines.append(f"// {rule}: {why}")
        lines.append(f"lint_off -rule {rule}")
    path.write_text("\n".join(lines) + "\n")
    return path


def lint(vpath, top: str) -> list[str]:
    """Lint one generated Verilog file; returns the warning and error lines (empty: clean)."""
    exe = shutil.which("verilator")
    if not exe:
        raise RuntimeError(VERILATOR_HINT)
    vpath = Path(vpath)
    vlt = waiver_file(vpath.with_name("lint_waivers.vlt"))
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", top, str(vlt),
                           str(vpath)], capture_output=True, text=True)
    issues = [line for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("%")]
    if proc.returncode != 0 and not issues:
        issues = [f"verilator exited with {proc.returncode}: {proc.stderr.strip()}"]
    return issues
