"""Column-combined weight-stationary systolic array (Kung, McDanel & Zhang, ASPLOS 2019).

Mapping. The block runs the same tiled GEMM ``out[M, N] = act[M, K] @ W[K, N]`` as the dense
array (``hw.systolic``): array ROWS are the reduction, array COLUMNS the output channels.
The paper combines *filter-matrix columns*, i.e. inputs = our K indices = our array rows:
after column combining (``models.column_combining``) each array row is one *packed row*
(a group of up to ``alpha`` original K indices), so the row receives the ``alpha``
activations of its group side by side ("lanes") and every cell holds a static
``ceil(log2 alpha)``-bit select register that picks the lane its int8 weight belongs to.

Cells are **bit-parallel** int8 (the paper's cells are bit-serial): one full multiply per
cycle, so the cycle schedule is exactly the dense array's (``SystolicBlock``): one command
beat, ``rows`` weight beats (each a row of ``{weight, sel}`` cells: the selects load with
the weights, in the same beats), ``count`` activation beats (each ``rows x alpha`` lanes)
and the ``rows + cols + 2`` pipeline drain. ``CombinedConfig.pass_cycles`` is
``SystolicConfig.pass_cycles``. With ``alpha = 1`` the select is 0 bits wide and the block is
the dense array: same outputs, same cycles.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import CombinedConfig
from .layouts import acc_shape, act_shape, combined_layouts, weight_shape
from .systolic import SystolicBlock


def _lanes(cfg: CombinedConfig) -> data.ArrayLayout:
    return data.ArrayLayout(act_shape(cfg.fxp), cfg.alpha)


class CombinedColumnCell(wiring.Component):
    """A processing element with an input multiplexer.

    Ports: ``load``/``w_in`` shift a ``{weight, sel}`` cell in (``w_out`` passes it down the
    column); ``en`` advances the compute pipeline: ``a <= a_in`` (all ``alpha`` lanes move
    right), ``psum_out <= psum_in + a[sel] * weight``. One cycle of latency on the lanes and
    on the partial sum, like ``hw.systolic.ProcessingElement``.
    """

    def __init__(self, cfg: CombinedConfig):
        self._cfg = cfg
        cell = combined_layouts(cfg).weight_row.elem_shape
        super().__init__({
            "en": In(1),
            "load": In(1),
            "w_in": In(cell),
            "w_out": Out(cell),
            "a_in": In(_lanes(cfg)),
            "a_out": Out(_lanes(cfg)),
            "psum_in": In(acc_shape(cfg.fxp)),
            "psum_out": Out(acc_shape(cfg.fxp)),
        })

    def elaborate(self, platform):
        m = Module()
        selected = Signal(act_shape(self._cfg.fxp))
        if self._cfg.alpha == 1:
            m.d.comb += selected.eq(self.a_out[0])
        else:
            with m.Switch(self.w_out.sel):
                for j in range(self._cfg.alpha):
                    with m.Case(j):
                        m.d.comb += selected.eq(self.a_out[j])
        with m.If(self.load):
            m.d.sync += self.w_out.eq(self.w_in)
        with m.If(self.en):
            m.d.sync += [
                self.a_out.eq(self.a_in),
                self.psum_out.eq(self.psum_in + selected * self.w_out.weight),
            ]
        return m


class CombinedArray(wiring.Component):
    """``rows x cols`` combined-column cells with input skew and output de-skew registers:
    ``hw.systolic.SystolicArray`` with ``alpha`` lanes per row and a select per cell.

    Ports: ``a_in[r]`` the ``alpha`` lanes of packed row ``r``; ``w_in[c]`` the cell entering
    the top of column ``c`` on ``load`` (rows shift down, so after ``rows`` loads row ``r``
    holds the ``rows-1-r``-th row sent); ``psum_out[c]`` the column sums. A vector presented
    in cycle t has its column sums on ``psum_out`` in cycle ``t + rows + cols``.
    """

    def __init__(self, cfg: CombinedConfig):
        self._cfg = cfg
        cell = combined_layouts(cfg).weight_row.elem_shape
        super().__init__({
            "en": In(1),
            "load": In(1),
            "w_in": In(cell).array(cfg.cols),
            "a_in": In(_lanes(cfg)).array(cfg.rows),
            "psum_out": Out(acc_shape(cfg.fxp)).array(cfg.cols),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        cells = [[CombinedColumnCell(cfg) for _ in range(cfg.cols)] for _ in range(cfg.rows)]
        for r, row in enumerate(cells):
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [pe.en.eq(self.en), pe.load.eq(self.load)]
                m.d.comb += pe.w_in.eq(self.w_in[c] if r == 0 else cells[r - 1][c].w_out)
                m.d.comb += pe.psum_in.eq(0 if r == 0 else cells[r - 1][c].psum_out)
                if c > 0:
                    m.d.comb += pe.a_in.eq(row[c - 1].a_out)
        for r in range(cfg.rows):  # input skew: row r waits r cycles
            m.d.comb += cells[r][0].a_in.eq(self._delay(m, self.a_in[r], r, _lanes(cfg),
                                                        f"skew_{r}"))
        for c in range(cfg.cols):  # output de-skew: column c waits cols-1-c cycles
            m.d.comb += self.psum_out[c].eq(
                self._delay(m, cells[-1][c].psum_out, cfg.cols - 1 - c, acc_shape(cfg.fxp),
                            f"deskew_{c}"))
        return m

    def _delay(self, m, value, cycles, shape, name):
        for i in range(cycles):
            reg = Signal(shape, name=f"{name}_{i}")
            with m.If(self.en):
                m.d.sync += reg.eq(value)
            value = reg
        return value


class CombinedBlock(SystolicBlock):
    """Column-combined systolic array block: ``hw.systolic.SystolicBlock`` (same FSM,
    partial-sum memory, requantisers, global stall and cycle schedule) around a
    ``CombinedArray``.

    Ports (payload layouts in ``hw.layouts.combined_layouts``):
      ``cmd``     in:  one beat per pass, as the dense block.
      ``weights`` in:  ``rows`` beats per pass, bottom packed row first, each ``cols`` cells
                       ``{weight, sel}``: weight *and* select loading take these beats.
      ``acts``    in:  ``count`` beats per pass, each ``rows`` packed rows x ``alpha`` lanes
                       (lane ``j`` of row ``g`` = activation of the group's ``j``-th column,
                       0 for unused lanes).
      ``out``     out: ``count`` beats on emit passes, each ``cols`` output activations.

    Cycle schedule of one pass (``CombinedConfig.pass_cycles``, mirrored by
    ``sim.combined``): command in cycle 0, weight+select rows in cycles 1..rows, activation
    vectors in cycles rows+1..rows+count, the output beat of the vector accepted in cycle t
    in cycle ``t + rows + cols + 2``; back in IDLE after ``1 + rows + count + rows + cols + 1``
    cycles. Backpressure on ``out`` stalls everything; missing input beats insert bubbles.
    """

    def _layouts(self):
        return combined_layouts(self._cfg)

    def _array(self):
        return CombinedArray(self._cfg)
