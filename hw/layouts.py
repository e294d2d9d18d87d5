"""Config -> Amaranth data layouts: the only place bits are packed.

Testbenches pack and unpack stream payloads with these same layouts (``pack``/``unpack``),
so the RTL and the host agree on one packing rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import signed, unsigned
from amaranth.lib import data

from .config import FixedPointConfig, NullHopConfig, SystolicConfig, ceil_log2


def act_shape(fxp: FixedPointConfig):
    return unsigned(fxp.act_bits)


def weight_shape(fxp: FixedPointConfig):
    return signed(fxp.weight_bits)


def acc_shape(fxp: FixedPointConfig):
    return signed(fxp.acc_bits)


def requant_layout(fxp: FixedPointConfig, lanes: int) -> data.StructLayout:
    """Per-output-channel bias and requantisation constants for ``lanes`` channels."""
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(fxp.bias_bits), lanes),
        "mult": data.ArrayLayout(unsigned(fxp.mult_bits), lanes),
        "shift": data.ArrayLayout(unsigned(fxp.shift_bits), lanes),
    })


@dataclass(frozen=True)
class SystolicLayouts:
    command: data.StructLayout
    weight_row: data.ArrayLayout
    act_vector: data.ArrayLayout
    out_vector: data.ArrayLayout


def systolic_layouts(cfg: SystolicConfig) -> SystolicLayouts:
    fxp = cfg.fxp
    command = data.StructLayout({
        "count": unsigned(cfg.count_bits),  # output pixels in this pass, 1..acc_depth
        "accumulate": 1,  # add to the partial sums of the previous pass (not the first K tile)
        "emit": 1,  # last K tile: add bias, requantise and send the outputs
        "relu": 1,  # clip to the unsigned range (else the signed one)
        "requant": requant_layout(fxp, cfg.cols),
    })
    return SystolicLayouts(
        command=command,
        weight_row=data.ArrayLayout(weight_shape(fxp), cfg.cols),
        act_vector=data.ArrayLayout(act_shape(fxp), cfg.rows),
        # output bytes: unsigned after ReLU, two's complement otherwise
        out_vector=data.ArrayLayout(unsigned(fxp.act_bits), cfg.cols),
    )


def pack(layout, value) -> int:
    """Python value (dict / list / int) -> the payload's integer bits."""
    return layout.const(value).as_value().value


def unpack(layout, bits: int):
    """Payload integer bits -> a ``data.Const`` view (fields / indexing give Python ints)."""
    return data.Const(layout, int(bits))


def unpack_array(layout: data.ArrayLayout, bits: int) -> list[int]:
    view = unpack(layout, bits)
    return [int(view[i]) for i in range(layout.length)]


def combined_layouts(cfg) -> SystolicLayouts:
    """``hw.combined.CombinedBlock``: the dense command and output; each weight-row entry is a
    cell's ``{weight, sel}`` (select loaded with its weight) and each activation-vector entry
    carries the ``alpha`` lanes of one packed row (lane ``j`` = the group's ``j``-th column)."""
    fxp = cfg.fxp
    dense = systolic_layouts(cfg)
    cell = data.StructLayout({"weight": weight_shape(fxp), "sel": unsigned(cfg.sel_bits)})
    return SystolicLayouts(
        command=dense.command,
        weight_row=data.ArrayLayout(cell, cfg.cols),
        act_vector=data.ArrayLayout(data.ArrayLayout(act_shape(fxp), cfg.alpha), cfg.rows),
        out_vector=dense.out_vector,
    )


@dataclass(frozen=True)
class SnaPEALayouts:
    lane: data.StructLayout
    tile: data.StructLayout
    command: data.StructLayout
    tap: data.StructLayout
    bank: data.StructLayout
    weight_row: data.ArrayLayout
    act: data.ArrayLayout
    out_vector: data.ArrayLayout


def snapea_layouts(cfg) -> SnaPEALayouts:
    """Stream payloads of ``hw.snapea.SnaPEABlock`` (``cfg``: ``SnaPEAConfig``)."""
    fxp = cfg.fxp
    taps = unsigned(cfg.tap_bits)
    lane = data.StructLayout({
        "taps": taps,  # the kernel's non-zero weights in this segment; 0 = lane idle
        "exact_from": taps,  # taps of the segment after which every weight is <= 0
        "spec_n": taps,  # speculation taps in this segment (0: none)
        "threshold": signed(fxp.acc_bits),  # predicted zero if psum < threshold after spec_n
        "bias": signed(fxp.bias_bits),
        "mult": unsigned(fxp.mult_bits),
        "shift": unsigned(fxp.shift_bits),
        "last": 1,  # the kernel's last segment: write outputs (else partial sums)
    })
    tile = data.StructLayout({
        "windows": unsigned(cfg.window_bits),  # output pixels of the tile
        "out_w": unsigned(cfg.window_bits),  # windows per row of the tile
        "col_step": unsigned(cfg.addr_bits),  # input address step to the next window (stride)
        "row_step": unsigned(cfg.addr_bits),  # ... to the next row (stride x tile input width)
        "first": 1,  # first segment: start from the bias (else from the bank's partial sum)
        "check_phase": unsigned(max(1, ceil_log2(cfg.check_every))),  # segment start % k
        "terminate": 1,  # exact early termination on (ReLU layers fed by ReLU layers)
        "relu": 1,
    })
    command = data.StructLayout({
        "load_acts": 1,  # first command of a tile: load the tile's input first
        "act_count": unsigned(max(1, cfg.act_depth.bit_length())),
        "taps": taps,  # weight beats that follow (the longest kernel's taps in the segment)
        "readout": 1,  # last segment: send the tile's outputs
        "tile": tile,
        "lane": data.ArrayLayout(lane, cfg.lanes),
    })
    tap = data.StructLayout({"weight": weight_shape(fxp), "offset": unsigned(cfg.addr_bits)})
    # a lane's bank entry per window: the partial sum between segments (dead: the window
    # stopped early), the output activation in the low bits after the last segment
    bank = data.StructLayout({"value": signed(fxp.acc_bits), "dead": 1})
    return SnaPEALayouts(lane=lane, tile=tile, command=command, tap=tap, bank=bank,
                         weight_row=data.ArrayLayout(tap, cfg.lanes),
                         act=data.ArrayLayout(act_shape(fxp), 1),
                         out_vector=data.ArrayLayout(unsigned(fxp.act_bits), cfg.lanes))


@dataclass(frozen=True)
class NullHopLayouts:
    command: data.StructLayout
    weight_row: data.ArrayLayout
    word: data.StructLayout


def nullhop_layouts(cfg: NullHopConfig) -> NullHopLayouts:
    """Payload layouts of the block's streams (the tb and the driver pack with these)."""
    fxp = cfg.fxp
    dim, kb = cfg.dim_bits, cfg.k_bits
    command = data.StructLayout({
        "load": 1,  # load kernels (else reuse the previous pass's kernel memory)
        "emit": 1,  # last input-channel tile: run the output stage (else keep the psums)
        "relu": 1,
        "pool": 1,  # 2x2 max-pooling, stride 2 (needs relu and even out_h, out_w)
        "k": unsigned(kb),
        "stride_log2": 2,  # stride 1, 2, 4 or 8
        "pad_top": unsigned(kb),  # zero rows above the pass input (offset of output row 0)
        "pad_left": unsigned(kb),
        "in_h": unsigned(dim), "in_w": unsigned(dim),  # the pass's input rows / width
        "out_h": unsigned(dim), "out_w": unsigned(dim),  # its output (before pooling)
        "slices": unsigned(cfg.slices_bits),  # input slices in this pass
        "slice_log2": unsigned(cfg.slice_log2_bits),  # Cp = 1 << slice_log2
        "requant": requant_layout(fxp, cfg.lanes),
    })
    word = data.StructLayout({"data": unsigned(cfg.word_bits), "first": 1, "last": 1})
    return NullHopLayouts(command, data.ArrayLayout(weight_shape(fxp), cfg.lanes), word)
