"""Config -> Amaranth data layouts: the only place bits are packed.

Testbenches pack and unpack stream payloads with these same layouts (``pack``/``unpack``),
so the RTL and the host agree on one packing rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import signed, unsigned
from amaranth.hdl import Const
from amaranth.lib import data

from .config import FixedPointConfig, SystolicConfig


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
