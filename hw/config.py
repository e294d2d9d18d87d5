"""The single source of truth for every block's parameters.

Pure Python: imports neither amaranth nor torch, so the simulator, the RTL generator, the
testbenches and the CLI all read the same frozen dataclasses. Derived widths and the cycle
formulas of each block's schedule live here too, next to the parameters they depend on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


def ceil_log2(n: int) -> int:
    """Bits needed to index ``n`` items (0 for n <= 1)."""
    return max(0, (int(n) - 1).bit_length())


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _check_int(name: str, value, lo: int, hi: int | None = None, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {rng}, not {value!r}{hint}")


@dataclass(frozen=True)
class FixedPointConfig:
    """The fixed-point contract shared by every block, the simulator and the torch reference.

    - weights: signed ``weight_bits`` integers, symmetric, one scale per output channel;
    - activations: unsigned ``act_bits`` integers (post-ReLU, zero point 0);
    - accumulator: signed ``acc_bits``; the bias is a signed ``bias_bits`` integer added to it;
    - requantisation: ``y = clip((acc * mult + round) >> shift)`` with an unsigned
      ``mult_bits`` multiplier and a ``shift_bits`` shift per output channel, where
      ``round = (1 << shift) >> 1`` (round half up, i.e. towards +inf on ties);
    - ReLU layers clip to ``[0, 2**act_bits - 1]``; layers without ReLU (the classifier)
      clip to the signed range ``[-2**(act_bits-1), 2**(act_bits-1) - 1]``.
    """

    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 32
    bias_bits: int | None = None  # None: as wide as the accumulator
    mult_bits: int = 16
    shift_bits: int = 6

    def __post_init__(self):
        _check_int("act_bits", self.act_bits, 2, 16)
        _check_int("weight_bits", self.weight_bits, 2, 16)
        _check_int("acc_bits", self.acc_bits, self.act_bits + self.weight_bits, 64,
                   " (the accumulator must hold at least one product)")
        if self.bias_bits is None:
            object.__setattr__(self, "bias_bits", self.acc_bits)
        _check_int("bias_bits", self.bias_bits, 2, self.acc_bits,
                   " (the bias is added into the accumulator)")
        _check_int("mult_bits", self.mult_bits, 2, 32)
        _check_int("shift_bits", self.shift_bits, 1, 7)

    @property
    def act_max(self) -> int:
        return (1 << self.act_bits) - 1

    @property
    def weight_max(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def acc_max(self) -> int:
        return (1 << (self.acc_bits - 1)) - 1

    @property
    def bias_max(self) -> int:
        return (1 << (self.bias_bits - 1)) - 1

    @property
    def mult_max(self) -> int:
        return (1 << self.mult_bits) - 1

    @property
    def shift_max(self) -> int:
        return (1 << self.shift_bits) - 1

    def worst_case_acc(self, reduction: int, max_abs_bias: int = 0) -> int:
        """Largest |accumulator| a dot product of ``reduction`` terms can reach."""
        return reduction * self.act_max * (self.weight_max + 1) + max_abs_bias

    def check_reduction(self, layer_name: str, reduction: int, max_abs_bias: int = 0) -> None:
        """Raise if a layer with this reduction length could overflow the accumulator."""
        worst = self.worst_case_acc(reduction, max_abs_bias)
        if worst > self.acc_max:
            need = worst.bit_length() + 1
            raise ValueError(
                f"layer {layer_name!r} is too large for the widths: a {reduction}-term dot "
                f"product of {self.act_bits}-bit activations and {self.weight_bits}-bit weights "
                f"can reach {worst}, which overflows a {self.acc_bits}-bit accumulator; "
                f"use --acc-bits {need} or more")


@dataclass(frozen=True)
class SystolicConfig:
    """Dense weight-stationary systolic array (see ``hw.systolic.SystolicBlock``).

    ``rows`` is the reduction dimension (input channels x kernel positions), ``cols`` the
    output channels; ``acc_depth`` is the depth of the partial-sum memory, i.e. the most
    output pixels one pass can hold.
    """

    rows: int = 8
    cols: int = 8
    acc_depth: int = 256
    fxp: FixedPointConfig = field(default_factory=FixedPointConfig)

    block = "systolic"

    def __post_init__(self):
        _check_int("rows", self.rows, 1, 256, " (the array needs at least one row)")
        _check_int("cols", self.cols, 1, 256, " (the array needs at least one column)")
        _check_int("acc_depth", self.acc_depth, 1, 1 << 20)
        if isinstance(self.fxp, dict):
            object.__setattr__(self, "fxp", FixedPointConfig(**self.fxp))

    # --- derived widths -------------------------------------------------------------------
    @property
    def count_bits(self) -> int:
        """Width of the per-pass pixel count (holds 1..acc_depth)."""
        return max(1, self.acc_depth.bit_length())

    @property
    def addr_bits(self) -> int:
        return max(1, ceil_log2(self.acc_depth))

    # --- the cycle schedule (mirrored by sim.systolic and checked against the RTL) ---------
    @property
    def pipeline_latency(self) -> int:
        """Cycles from accepting an activation beat to its output beat being valid.

        ``rows`` skew/array stages, ``cols`` array/de-skew stages, one partial-sum memory
        read stage and one requantisation register.
        """
        return self.rows + self.cols + 2

    def pass_cycles(self, pixels: int) -> int:
        """Cycles one pass occupies: 1 command + ``rows`` weight beats + ``pixels``
        activation beats + the pipeline drain until the last partial sum is written."""
        return 1 + self.rows + pixels + self.rows + self.cols + 1

    def to_dict(self) -> dict:
        return {"block": self.block, **dataclasses.asdict(self)}


def config_from_dict(d: dict):
    """Rebuild a block config from ``to_dict()`` output (the JSON written beside the Verilog)."""
    d = dict(d)
    block = d.pop("block")
    try:
        cls = BLOCK_CONFIGS[block]
    except KeyError:
        raise ValueError(f"unknown block {block!r}; expected one of {sorted(BLOCK_CONFIGS)}")
    fxp = FixedPointConfig(**d.pop("fxp", {}))
    return cls(fxp=fxp, **d)


def config_to_json(cfg) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


BLOCK_CONFIGS: dict[str, type] = {"systolic": SystolicConfig}

SYSTOLIC_PRESETS = {
    "tiny": SystolicConfig(rows=4, cols=4, acc_depth=64),
    "default": SystolicConfig(rows=8, cols=8, acc_depth=256),
    "large": SystolicConfig(rows=32, cols=32, acc_depth=1024),
}

# block name -> presets; every block registers its config class in BLOCK_CONFIGS and its
# presets (at least "default") here
PRESETS: dict[str, dict] = {"systolic": SYSTOLIC_PRESETS}
