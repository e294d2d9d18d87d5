"""The pipelined RTL requantiser (Amaranth's simulator) against the fixed-point contract:
same value for every input, after exactly ``requant_latency`` enabled clock edges."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from zeroskip.hw.config import FixedPointConfig
from zeroskip.hw.fixedpoint import requantize
from zeroskip.hw.requantize import Requantizer

FXPS = {
    "default": FixedPointConfig(),
    # narrow: one partial product, a shift of 0..7 only (no coarse stage)
    "narrow": FixedPointConfig(act_bits=6, weight_bits=6, acc_bits=16, mult_bits=8,
                               shift_bits=3),
    "wide": FixedPointConfig(acc_bits=40, bias_bits=24, mult_bits=20, shift_bits=7),
}


def samples(fxp, n, rng):
    """Random inputs with the extremes of every field mixed in."""
    def pick(lo, hi):
        edge = rng.choice([lo, hi, 0, -1, 1, lo + 1, hi - 1])
        v = rng.integers(lo, hi + 1, dtype=np.int64) if rng.random() < 0.7 else edge
        return int(min(max(v, lo), hi))

    acc_hi, bias_hi = fxp.acc_max, fxp.bias_max
    for _ in range(n):
        yield (pick(-acc_hi - 1, acc_hi), pick(-bias_hi - 1, bias_hi), pick(0, fxp.mult_max),
               pick(0, fxp.shift_max), int(rng.random() < 0.5))


@pytest.mark.parametrize("name", FXPS)
def test_requantizer_rtl_equals_contract_after_its_latency(name):
    fxp = FXPS[name]
    rng = np.random.default_rng(5)
    inputs = list(samples(fxp, 300, rng))
    enables = (rng.random(len(inputs) * 2) < 0.7).astype(int).tolist()
    dut = Requantizer(fxp)
    got = []

    async def bench(ctx):
        pending = list(inputs)
        fed = []  # inputs sampled so far, in order
        edges = 0
        for en in enables + [1] * (fxp.requant_latency + 1):
            if pending:
                acc, bias, mult, shift, relu = pending[0]
                ctx.set(dut.acc, acc)
                ctx.set(dut.bias, bias)
                ctx.set(dut.mult, mult)
                ctx.set(dut.shift, shift)
                ctx.set(dut.relu, relu)
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                edges += 1
                fed.append(pending.pop(0) if pending else None)
                # after this edge the output holds what was sampled latency-1 edges earlier
                src = edges - fxp.requant_latency
                if src >= 0 and fed[src] is not None:
                    got.append((fed[src], ctx.get(dut.out)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == len(inputs)
    for (acc, bias, mult, shift, relu), out in got:
        want = requantize(acc + bias, mult, shift, fxp, bool(relu)) & fxp.act_max
        assert out == want, (acc, bias, mult, shift, relu)
