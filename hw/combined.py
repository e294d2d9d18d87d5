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
the weights, in the same beats, into the same bank), ``count`` activation beats (each
``rows x alpha`` lanes), passes overlapped on two banks as in the dense array, and
``CombinedConfig.layer_cycles`` is ``SystolicConfig.layer_cycles``. With ``alpha = 1`` the
select is 0 bits wide and the block is the dense array: same outputs, same cycles.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .arith import multiply_accumulate
from .config import CombinedConfig
from .layouts import acc_shape, act_shape, combined_layouts
from .systolic import SystolicArray, SystolicBlock, shift_banks


def _lanes(cfg: CombinedConfig) -> data.ArrayLayout:
    return data.ArrayLayout(act_shape(cfg.fxp), cfg.alpha)


class CombinedColumnCell(wiring.Component):
    """A processing element with an input multiplexer and two ``{weight, sel}`` banks.

    Ports: ``load[b]``/``w_in[b]`` shift a ``{weight, sel}`` cell into bank ``b`` (``w_out[b]``
    passes it down the column); ``bank_in`` is the bank of the lanes on ``a_in`` (it moves
    right with them, ``bank_out``). Every cycle ``a <= a_in`` (all ``alpha`` lanes move
    right) and, on the same edge, ``selected <= a_in[sel]`` and ``weight <= weight`` of bank
    ``bank_in``, then ``psum_out <= psum_in + selected * weight``. One cycle of latency on the
    lanes and on the partial sum, like ``hw.systolic.ProcessingElement``.
    """

    def __init__(self, cfg: CombinedConfig):
        self._cfg = cfg
        cell = combined_layouts(cfg).weight_row.elem_shape
        super().__init__({
            "load": In(2),
            "w_in": In(cell).array(2),
            "w_out": Out(cell).array(2),
            "a_in": In(_lanes(cfg)),
            "a_out": Out(_lanes(cfg)),
            "bank_in": In(1),
            "bank_out": Out(1),
            "psum_in": In(acc_shape(cfg.fxp)),
            "psum_out": Out(acc_shape(cfg.fxp)),
        })

    def elaborate(self, platform):
        m = Module()
        bank = [self.w_out[b] for b in range(2)]
        lane = Signal(act_shape(self._cfg.fxp))  # a_in[sel] of the vector's bank
        if self._cfg.alpha == 1:
            m.d.comb += lane.eq(self.a_in[0])
        else:
            sel = Signal.like(bank[0].sel)
            m.d.comb += sel.eq(Mux(self.bank_in, bank[1].sel, bank[0].sel))
            with m.Switch(sel):
                for j in range(self._cfg.alpha):
                    with m.Case(j):
                        m.d.comb += lane.eq(self.a_in[j])
        selected = Signal.like(lane)
        weight = Signal.like(bank[0].weight, name="weight")
        shift_banks(m, self)
        m.d.sync += [selected.eq(lane),
                     weight.eq(Mux(self.bank_in, bank[1].weight, bank[0].weight))]
        multiply_accumulate(m, selected, weight, self.psum_in, self.psum_out)
        return m


class CombinedArray(SystolicArray):
    """``rows x cols`` combined-column cells with input skew and output de-skew registers:
    ``hw.systolic.SystolicArray`` with ``alpha`` lanes per row and a select per cell.

    Ports: ``a_in[r]`` the ``alpha`` lanes of packed row ``r`` and ``bank`` their bank;
    ``w_in[c]`` the cell entering the top of column ``c`` of bank ``b`` on ``load[b]`` (rows
    shift down, so after ``rows`` loads row ``r`` holds the ``rows-1-r``-th row sent);
    ``psum_out[c]`` the column sums. A vector presented in cycle t has its column sums on
    ``psum_out`` in cycle ``t + rows + cols + 1``.
    """

    def _cell(self):
        return CombinedColumnCell(self._cfg)

    def _weight_shape(self):
        return combined_layouts(self._cfg).weight_row.elem_shape

    def _row_shape(self):
        return _lanes(self._cfg)


class CombinedBlock(SystolicBlock):
    """Column-combined systolic array block: ``hw.systolic.SystolicBlock`` (same bank control,
    partial-sum memory, requantisers, flow control and cycle schedule) around a
    ``CombinedArray``.

    Ports (payload layouts in ``hw.layouts.combined_layouts``):
      ``cmd``     in:  one beat per pass, as the dense block.
      ``weights`` in:  ``rows`` beats per pass, bottom packed row first, each ``cols`` cells
                       ``{weight, sel}``: weight *and* select loading take these beats.
      ``acts``    in:  ``count`` beats per pass, each ``rows`` packed rows x ``alpha`` lanes
                       (lane ``j`` of row ``g`` = activation of the group's ``j``-th column,
                       0 for unused lanes).
      ``out``     out: ``count`` beats on emit passes, each ``cols`` output activations.

    Cycle schedule: the dense block's (``SystolicBlock``; ``CombinedConfig.pass_schedule``
    and ``layer_cycles``, mirrored by ``sim.combined``): pass ``i`` uses bank ``i % 2`` of
    every cell's ``{weight, sel}`` registers and of the command registers, the next pass's
    cells load while a pass computes and its vectors follow while it drains; the output beat
    of the vector accepted in cycle t is valid in cycle ``t + pipeline_latency``. Flow
    control as in the dense block: the output FIFO's free places gate ``acts.ready``.
    """

    def _layouts(self):
        return combined_layouts(self._cfg)

    def _array(self):
        return CombinedArray(self._cfg)
