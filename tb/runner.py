"""Run a cocotb testbench on a block's generated Verilog with Icarus, from pytest.

``run_rtl(cfg, "tb.systolic_tb", case, build_dir)`` generates the Verilog for ``cfg``, builds
it, stores the ``tb.scoreboard.Case`` beside it (``case.npz``) and runs the cocotb module; it
raises ``AssertionError`` if any cocotb test failed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from zeroskip.hw.config import config_to_json

ICARUS_HINT = ("Icarus Verilog ('iverilog' and 'vvp') is not on PATH: install it with "
               "'apt-get update && apt-get install -y iverilog' (scripts/setup.sh does this "
               "when run as root)")


class SimulatorMissing(RuntimeError):
    pass


def check_icarus() -> None:
    if not (shutil.which("iverilog") and shutil.which("vvp")):
        raise SimulatorMissing(ICARUS_HINT)


_TIME_ZERO_REG = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*dump_module\S*)\s+= 0;$",
                            re.MULTILINE)


def icarus_time_zero_fix(verilog_text: str) -> str:
    """Make Icarus evaluate every ``always @*`` block once at time 0.

    Yosys's Verilog puts a dummy register in the sensitivity list of each combinational
    block, expecting an event on it at time 0; Icarus sees none (amaranth-lang/amaranth
    #1629), so outputs that depend only on registers still at their initial value read X.
    Toggling the dummy register once after time-0 initialisation fixes that. Simulation
    only: the Verilog handed to users is untouched.
    """
    fixed, n = _TIME_ZERO_REG.subn(
        lambda m: f"{m.group(0)}\n{m.group(1)}initial #0 {m.group(2)} = 1'h1;", verilog_text)
    return fixed


def build(cfg, build_dir: Path, generator=None) -> tuple[object, str]:
    """Generate the Verilog and compile it with Icarus; returns (runner, toplevel name).
    ``generator(cfg, build_dir) -> Verilog path`` replaces ``hw.gen.generate`` (e.g. the
    AXI4-Stream top of ``hw.axi``)."""
    from cocotb_tools.runner import get_runner

    from zeroskip.hw.gen import generate

    check_icarus()
    vpath = (generator or generate)(cfg, build_dir)
    top = vpath.stem
    sim_path = build_dir / f"{top}_icarus.v"
    sim_path.write_text(icarus_time_zero_fix(vpath.read_text()))
    runner = get_runner("icarus")
    runner.build(sources=[sim_path], hdl_toplevel=top, build_dir=build_dir,
                 timescale=("1ns", "1ps"), always=True, log_file=build_dir / "build.log")
    return runner, top


def run_rtl(cfg, tb_module: str, case, build_dir, testcase: str | None = None,
            generator=None) -> Path:
    """Build and run one cocotb test module against ``cfg``'s Verilog on ``case``."""
    from cocotb_tools.runner import get_results

    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    runner, top = build(cfg, build_dir, generator)
    case_path = build_dir / "case.npz"
    case.save(case_path)
    log = build_dir / "sim.log"
    results = build_dir / "results.xml"
    try:
        runner.test(
            test_module=tb_module, hdl_toplevel=top, build_dir=build_dir, test_dir=build_dir,
            testcase=testcase, timescale=("1ns", "1ps"), log_file=log, results_xml=results,
            extra_env={"ZS_CFG": config_to_json(cfg), "ZS_CASE": str(case_path),
                       "COCOTB_RANDOM_SEED": "1"})
    except SystemExit:  # the runner exits when a test failed; report it from the log below
        pass
    total, failed = get_results(results) if results.exists() else (0, 0)
    if total == 0 or failed:
        tail = _failure_excerpt(log)
        raise AssertionError(f"{failed} of {total} cocotb tests failed in {tb_module} "
                             f"(handshake seed {case.seed}, valid_p {case.valid_p}, ready_p "
                             f"{case.ready_p}; the case to re-run: {case_path}; log: {log}):"
                             f"\n{tail}")
    return results


def _failure_excerpt(log: Path) -> str:
    if not log.exists():
        return "(no simulator log)"
    lines = log.read_text().splitlines()
    for i, line in enumerate(lines):
        if "Traceback" in line or "AssertionError" in line:
            return "\n".join(lines[i:i + 40])
    return "\n".join(lines[-40:])


def load_case():
    """Inside a cocotb test: the config and the ``Case`` the pytest side stored."""
    import os

    from zeroskip.hw.config import config_from_dict
    from tb.scoreboard import Case

    return config_from_dict(json.loads(os.environ["ZS_CFG"])), Case.load(os.environ["ZS_CASE"])
