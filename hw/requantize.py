"""The output stage shared by every block: bias, requantisation, ReLU / saturation."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .arith import partial_product_groups, tree_sum
from .config import REQUANT_LATENCY, FixedPointConfig

# Multiplier bits whose shifted partial products one stage adds up (two adder levels).
_GROUP = 4


class Requantizer(wiring.Component):
    """Pipelined ``hw.fixedpoint.requantize`` for one output channel.

    Ports:
      ``acc`` (signed acc_bits), ``bias`` (signed bias_bits), ``mult`` (unsigned mult_bits),
      ``shift`` (unsigned shift_bits), ``relu`` (1 bit) -> ``out`` (act_bits: unsigned value
      after ReLU, two's complement otherwise); ``en`` advances every stage.

    ``out = clip(((acc + bias) * mult + ((1 << shift) >> 1)) >> shift)``.

    Schedule: ``REQUANT_LATENCY`` (``FixedPointConfig.requant_latency``) register stages, each
    loaded on a clock edge with ``en`` high; the inputs sampled on one such edge reach ``out``
    ``REQUANT_LATENCY - 1`` enabled edges later, and ``out`` is the last stage's register, so
    the block can use it as its output payload directly. The stages, each short enough for
    100 MHz on an ECP5: (1) ``acc + bias``; (2) the multiply's partial products
    ``biased << i`` for the set bits ``i`` of ``mult``, summed in groups of 4 bits (two
    adder levels), and the rounding constant; (3) the sum of the groups; (4) the rounding
    add; (5) the shift by a multiple of 8; (6) the shift by 0..7; (7) the clip. The multiply
    is a shift-add tree in logic (``hw.arith``). ``mult``, ``shift`` and ``relu`` travel with their value,
    so the inputs of consecutive cycles may belong to different output channels or
    layers.
    """

    def __init__(self, fxp: FixedPointConfig):
        self._fxp = fxp
        super().__init__({
            "en": In(1),
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
        bw = max(fxp.acc_bits, fxp.bias_bits) + 1
        # |product| < 2**(pw-2), so the rounded product fits pw bits for every shift that
        # leaves anything: a shift of pw or more rounds every product to 0 ("vanish")
        pw = bw + fxp.mult_bits + 1
        stages = []

        def stage(name, shape, value, *carry):
            """A register loaded with ``value`` on enabled edges; ``carry`` moves along."""
            reg = Signal(shape, name=name)
            regs = [Signal.like(c, name=f"{name}_{i}") for i, c in enumerate(carry)]
            with m.If(self.en):
                m.d.sync += reg.eq(value)
                m.d.sync += [r.eq(c) for r, c in zip(regs, carry)]
            stages.append(reg)
            return (reg, *regs)

        biased, mult, shift, relu = stage("biased", signed(bw), self.acc + self.bias,
                                          self.mult, self.shift, self.relu)
        rounding = Signal(pw - 1)
        m.d.comb += rounding.eq((Const(1, 1) << shift) >> 1)
        groups = partial_product_groups(biased, mult, _GROUP)
        *groups, rnd, shift, relu, vanish = stage(
            "group_0", groups[0].shape(), groups[0], *groups[1:], rounding, shift, relu,
            shift >= pw)
        product, rnd, shift, relu, vanish = stage(
            "product", signed(pw), tree_sum(g << (_GROUP * j) for j, g in enumerate(groups)),
            rnd, shift, relu, vanish)
        rounded, shift, relu, vanish = stage("rounded", signed(pw), product + rnd, shift, relu,
                                             vanish)
        coarse = Cat(Const(0, 3), shift[3:]) if fxp.shift_bits > 3 else Const(0, 1)
        shifted8, shift, relu, vanish = stage("shifted8", signed(pw), rounded >> coarse, shift,
                                              relu, vanish)
        shifted, relu = stage("shifted", signed(pw), Mux(vanish, 0, shifted8 >> shift[:3]),
                              relu)

        # the clip by bit tests (reductions), not by wide comparisons
        n = fxp.act_bits
        negative = shifted[-1]
        above_u = shifted[n:].any()  # |value| >= 2**n (or negative)
        above_s = shifted[n - 1:].any()  # >= 2**(n-1) unless negative
        below_s = ~shifted[n - 1:].all()  # < -2**(n-1) if negative
        hi_u, hi_s, lo_s = fxp.act_max, (1 << (n - 1)) - 1, 1 << (n - 1)
        clipped_u = Mux(negative, 0, Mux(above_u, hi_u, shifted[:n]))
        clipped_s = Mux(negative, Mux(below_s, lo_s, shifted[:n]),
                        Mux(above_s, hi_s, shifted[:n]))
        with m.If(self.en):
            m.d.sync += self.out.eq(Mux(relu, clipped_u, clipped_s))
        assert len(stages) + 1 == REQUANT_LATENCY
        return m



def delay_stages(m, signals: dict, stages: int, name: str) -> list[dict]:
    """Carry ``signals`` (name -> value) through ``stages`` register stages on ``m.d.sync``,
    e.g. a valid flag and its payload beside the requantiser's ``REQUANT_LATENCY`` stages, so
    they leave the requantiser in the same cycle as its result. Stage ``i``'s registers are
    named ``name.format(i=i, k=key)``. Returns every stage's dict; the last is the output."""
    out = []
    for i in range(stages):
        nxt = {k: Signal.like(v, name=name.format(i=i, k=k)) for k, v in signals.items()}
        m.d.sync += [nxt[k].eq(v) for k, v in signals.items()]
        out.append(signals := nxt)
    return out
