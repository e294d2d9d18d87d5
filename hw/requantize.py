"""The output stage shared by every block: bias, requantisation, ReLU / saturation."""

from __future__ import annotations

from amaranth import Const, Module, Mux, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import FixedPointConfig


class Requantizer(wiring.Component):
    """Combinational ``hw.fixedpoint.requantize`` for one output channel.

    Ports:
      ``acc`` (signed acc_bits), ``bias`` (signed bias_bits), ``mult`` (unsigned mult_bits),
      ``shift`` (unsigned shift_bits), ``relu`` (1 bit) -> ``out`` (act_bits: unsigned value
      after ReLU, two's complement otherwise).

    ``out = clip(((acc + bias) * mult + ((1 << shift) >> 1)) >> shift)``; no cycles of its own:
    the enclosing block registers ``out``.
    """

    def __init__(self, fxp: FixedPointConfig):
        self._fxp = fxp
        super().__init__({
            "acc": In(signed(fxp.acc_bits)),
            "bias": In(signed(fxp.bias_bits)),
            "mult": In(unsigned(fxp.mult_bits)),
            "shift": In(unsigned(fxp.shift_bits)),
            "relu": In(1),
            "out": Out(unsigned(fxp.act_bits)),
        })

    def elaborate(self, platform):
        fxp = self._fxp
        m = Module()
        biased = self.acc + self.bias
        rounding = (Const(1, 1) << self.shift) >> 1
        shifted = (biased * self.mult + rounding) >> self.shift  # signed: a floor shift
        hi_u, hi_s, lo_s = fxp.act_max, (1 << (fxp.act_bits - 1)) - 1, -(1 << (fxp.act_bits - 1))
        clipped_u = Mux(shifted < 0, 0, Mux(shifted > hi_u, hi_u, shifted))
        clipped_s = Mux(shifted < lo_s, lo_s, Mux(shifted > hi_s, hi_s, shifted))
        m.d.comb += self.out.eq(Mux(self.relu, clipped_u, clipped_s))
        return m
