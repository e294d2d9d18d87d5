"""cocotb test of the case player (``tb.player``): for each case of the run, reset the block,
load the case's files, let the simulator run until the player says it is done, and check
what it recorded with the block's ``Scoreboard`` (the same checks as the block's own bench:
every output payload, no extra beat, every input beat taken, total and per-beat cycles)."""

import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from zeroskip.hw import layouts
from tb.player import read_transfers
from tb.runner import load_cases
from tb.scoreboard import Scoreboard
from tb.streams import RunClock, describe_lanes


def describe_for(cfg):
    """The block's payload rendering for messages (its output lanes, or NullHop's words)."""
    if cfg.block == "nullhop":  # imported here: it brings torch, seconds per simulation
        from tb.nullhop_cases import describe_word

        return describe_word(cfg)
    return describe_lanes(getattr(layouts, f"{cfg.block}_layouts")(cfg).out_vector)


@cocotb.test()
async def play_cases(dut):
    t0 = time.perf_counter()
    cfg, cases = load_cases()
    describe = describe_for(cfg)
    dut._log.info("loaded %d case(s) in %.2f s", len(cases), time.perf_counter() - t0)
    clock = RunClock()
    Clock(dut.clk, 10, unit="ns").start()
    failures = []
    for i, case in enumerate(cases):
        dut.zs_case.value = i
        dut.rst.value = 1
        dut.zs_load.value = 1
        await RisingEdge(dut.clk)
        dut.zs_load.value = 0
        for _ in range(2):  # the reset of tb.streams.start_clock_and_reset
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        t1, c1 = time.perf_counter(), time.process_time()
        await RisingEdge(dut.zs_done)
        t2, c2 = time.perf_counter(), time.process_time()
        transfers, timed_out = read_transfers(case, i, Path.cwd())
        errs = Scoreboard(case, describe).errors(transfers)
        if timed_out:
            errs.insert(0, "no completion before the cycle limit")
        if errs:
            failures.append(f"case {i} (handshake seed {case.seed}, valid_p {case.valid_p}, "
                            f"ready_p {case.ready_p}): " + "\n  ".join(errs))
        else:
            dut._log.info("case %d: RTL took the predicted %s cycles (simulated in %.3f s, "
                          "%.3f s of CPU; checked in %.3f s)", i,
                          case.cycles if case.cycles >= 0 else "(no prediction)", t2 - t1,
                          c2 - c1, time.perf_counter() - t2)
    clock.write(cases=len(cases))
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
