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

from .arith import multiply_accumulate
from .config import CombinedConfig
from .layouts import acc_shape, act_shape, combined_layouts, weight_shape
from .systolic import SystolicArray, SystolicBlock


def _lanes(cfg: CombinedConfig) -> data.ArrayLayout:
    return data.ArrayLayout(act_shape(cfg.fxp), cfg.alpha)


class CombinedColumnCell(wiring.Component):
    """A processing element with an input multiplexer.

    Ports: ``load``/``w_in`` shift a ``{weight, sel}`` cell in (``w_out`` passes it down the
    column); every cycle ``a <= a_in`` (all ``alpha`` lanes move
    right), ``psum_out <= psum_in + a[sel] * weight``. One cycle of latency on the lanes and
    on the partial sum, like ``hw.systolic.ProcessingElement``.
    """

    def __init__(self, cfg: CombinedConfig):
        self._cfg = cfg
        cell = combined_layouts(cfg).weight_row.elem_shape
        super().__init__({
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
        lane = Signal(act_shape(self._cfg.fxp))  # a_in[sel]
        if self._cfg.alpha == 1:
            m.d.comb += lane.eq(self.a_in[0])
        else:
            with m.Switch(self.w_out.sel):
                for j in range(self._cfg.alpha):
                    with m.Case(j):
                        m.d.comb += lane.eq(self.a_in[j])
        selected = Signal.like(lane)
        with m.If(self.load):
            m.d.sync += self.w_out.eq(self.w_in)
        m.d.sync += [self.a_out.eq(self.a_in), selected.eq(lane)]
        multiply_accumulate(m, selected, self.w_out.weight, self.psum_in, self.psum_out)
        return m


class CombinedArray(SystolicArray):
    """``rows x cols`` combined-column cells with input skew and output de-skew registers:
    ``hw.systolic.SystolicArray`` with ``alpha`` lanes per row and a select per cell.

    Ports: ``a_in[r]`` the ``alpha`` lanes of packed row ``r``; ``w_in[c]`` the cell entering
    the top of column ``c`` on ``load`` (rows shift down, so after ``rows`` loads row ``r``
    holds the ``rows-1-r``-th row sent); ``psum_out[c]`` the column sums. A vector presented
    in cycle t has its column sums on ``psum_out`` in cycle ``t + rows + cols + 1``.
    """

    def _cell(self):
        return CombinedColumnCell(self._cfg)

    def _weight_shape(self):
        return combined_layouts(self._cfg).weight_row.elem_shape

    def _row_shape(self):
        return _lanes(self._cfg)


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
    ``sim.combined``): command in cycle 0, weight+select rows in cycles 1..rows (each
    entering the array a cycle later), activation vectors in cycles rows+2..rows+count+1,
    the output beat of the vector accepted in cycle t in cycle ``t + pipeline_latency``;
    back in IDLE after ``1 + rows + 1 + count + rows + cols + 2`` cycles. Flow control as in
    the dense block: the output FIFO's free places gate ``acts.ready``.
    """

    def _layouts(self):
        return combined_layouts(self._cfg)

    def _array(self):
        return CombinedArray(self._cfg)
