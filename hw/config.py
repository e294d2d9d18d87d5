"""The single source of truth for every block's parameters.

Pure Python: imports neither amaranth nor torch, so the simulator, the RTL generator, the
testbenches and the CLI all read the same frozen dataclasses. Derived widths and the cycle
formulas of each block's schedule live here too, next to the parameters they depend on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import ClassVar


def ceil_log2(n: int) -> int:
    """Bits needed to index ``n`` items (0 for n <= 1)."""
    return max(0, (int(n) - 1).bit_length())


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


# Register stages of the shared output stage (``hw.requantize.Requantizer``): bias add,
# partial-product group sums, product, rounding add, coarse shift, fine shift, clip. Every
# block's cycle formulas count it; the RTL asserts it.
REQUANT_LATENCY = 7


def _check_int(name: str, value, lo: int, hi: int | None = None, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {rng}, not {value!r}{hint}")


def _check_power_of_two(name: str, value, lo: int, hi: int, hint: str = "") -> None:
    _check_int(name, value, lo, hi, hint)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value!r} "
                         f"(try {1 << (value.bit_length() - 1)})")


@dataclass(frozen=True)
class Bounds:
    """The range of an integer field, kept in its dataclass metadata (see ``bounded``)."""

    lo: int
    hi: int | None = None
    power_of_two: bool = False
    why: str = ""  # what the field is, said after the range in the error, in parentheses

    def check(self, name: str, value) -> None:
        hint = f" ({self.why})" if self.why else ""
        if self.power_of_two:
            _check_power_of_two(name, value, self.lo, self.hi, hint)
        else:
            _check_int(name, value, self.lo, self.hi, hint)


def bounded(default: int, lo: int, hi: int | None = None, *, power_of_two: bool = False,
            why: str = ""):
    """A dataclass field of ``default`` that must be an integer in ``lo..hi`` (no upper
    bound if ``hi`` is None), and a power of two if ``power_of_two``; ``check_bounds``
    enforces it."""
    return field(default=default, metadata={"bounds": Bounds(lo, hi, power_of_two, why)})


def check_bounds(cfg) -> None:
    """Raise ``ValueError`` naming the first field of ``cfg``, in declaration order, that is
    outside the range its ``bounded`` declaration gives."""
    for f in dataclasses.fields(cfg):
        bounds = f.metadata.get("bounds")
        if bounds is not None:
            bounds.check(f.name, getattr(cfg, f.name))


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

    act_bits: int = bounded(8, 2, 16, why="activation width in bits (unsigned, post-ReLU)")
    weight_bits: int = bounded(8, 2, 16, why="weight width in bits (signed)")
    acc_bits: int = field(default=32, metadata={"help": "accumulator width in bits (signed; at "
                          "least act_bits + weight_bits, at most 64)"})
    bias_bits: int | None = field(default=None, metadata={
        "help": "bias width in bits (signed; default: as wide as the accumulator)"})
    mult_bits: int = bounded(16, 2, 32, why="requantisation multiplier width in bits")
    shift_bits: int = bounded(6, 1, 7, why="requantisation shift width in bits")

    def __post_init__(self):
        check_bounds(self)
        # the accumulator's and the bias's ranges depend on the other widths
        _check_int("acc_bits", self.acc_bits, self.act_bits + self.weight_bits, 64,
                   " (the accumulator must hold at least one product)")
        if self.bias_bits is None:
            object.__setattr__(self, "bias_bits", self.acc_bits)
        _check_int("bias_bits", self.bias_bits, 2, self.acc_bits,
                   " (the bias is added into the accumulator)")

    @property
    def requant_latency(self) -> int:
        """Clock edges from the requantiser's inputs to its registered output
        (``REQUANT_LATENCY``)."""
        return REQUANT_LATENCY

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


class BlockConfig:
    """Base of every block's frozen config dataclass.

    A subclass declares its fields (``fxp: FixedPointConfig`` last), each integer one with its
    range (``bounded``), and its ``block`` name; a ``validate()`` override adds the rules that
    involve more than one field. Derived widths are properties of the subclass. Here: the
    range checks, the fixed-point coercion (``fxp`` may be given as the dict ``to_dict()``
    wrote), ``to_dict`` / ``to_json`` / ``from_dict``.
    """

    block: ClassVar[str] = ""
    mac_units_field: ClassVar[str] = ""  # the field that counts MAC units, if one does

    def __post_init__(self):
        if isinstance(self.fxp, dict):
            object.__setattr__(self, "fxp", FixedPointConfig(**self.fxp))
        check_bounds(self)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` if a rule beyond the fields' own ranges is broken (called
        after every ``bounded`` field has been checked)."""

    # --- hardware size: what comparisons hold equal -----------------------------------------
    @property
    def mac_units(self) -> int:
        """Multiply-accumulate units the block has (what ``zeroskip run`` holds equal): the
        field named by the class's ``mac_units_field``."""
        if not self.mac_units_field:
            raise NotImplementedError(f"{type(self).__name__} does not say its MAC units")
        return getattr(self, self.mac_units_field)

    @property
    def hardware(self) -> str:
        """The MAC units in the block's own terms (e.g. "8x8 array", "64 lanes")."""
        return f"{self.mac_units} {self.mac_units_field.replace('_', ' ')}"

    @property
    def mac_units_description(self) -> str:
        return f"{self.hardware}, {self.mac_units} MAC units"

    def with_mac_units(self, n: int):
        """This config with ``n`` MAC units and every other field as it is; ``ValueError``
        saying why when the block cannot have ``n``."""
        return dataclasses.replace(self, **{self.mac_units_field: n})

    def to_dict(self) -> dict:
        return {"block": self.block, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        """The config ``to_dict()`` wrote (its ``block`` key, if any, must be this class's)."""
        d = dict(d)
        block = d.pop("block", cls.block)
        if block != cls.block:
            raise ValueError(f"a {block!r} config cannot be read as a {cls.block!r} config")
        return cls(**d)


@dataclass(frozen=True)
class SystolicConfig(BlockConfig):
    """Dense weight-stationary systolic array (see ``hw.systolic.SystolicBlock``).

    ``rows`` is the reduction dimension (input channels x kernel positions), ``cols`` the
    output channels; ``acc_depth`` is the depth of the partial-sum memory, i.e. the most
    output pixels one pass can hold.

    The cycle schedule (``SystolicBlock``'s docstring states it; ``pass_schedule`` and
    ``layer_cycles`` evaluate it) overlaps passes on two banks. With every input valid and
    ``out.ready`` high, pass ``i`` of ``n_i`` vectors has its command accepted in cycle
    ``C_i``, its last weight beat in ``E_i``, its activation beats in ``F_i .. L_i``::

        C_i = max(C_(i-1) + 1, L_(i-2) + rows + cols + 3)      (C_0 = 0: its bank is free)
        E_i = max(C_i, E_(i-1)) + rows                          (rows beats, in pass order)
        F_i = max(E_i + 2, L_(i-1) + max(1, 4 - n_(i-1)))       (settled; hazard gap)
        L_i = F_i + n_i - 1

    and a layer takes ``L_last + pipeline_latency + 1`` cycles, first command to last output
    beat inclusive. When every pass holds ``n_i >= 2*rows + cols + 4`` vectors the
    activation stream never pauses and this is ``rows + 2 + sum(n_i) + pipeline_latency``:
    the first weight load and the last drain are all that is not hidden.
    """

    rows: int = bounded(8, 1, 256, why="array rows: reduction terms per pass")
    cols: int = bounded(8, 1, 256, why="array columns: output channels per pass")
    acc_depth: int = bounded(256, 1, 1 << 20, why="partial-sum memory rows: output pixels "
                             "per pass")
    fxp: FixedPointConfig = field(default_factory=FixedPointConfig)

    block = "systolic"

    @property
    def mac_units(self) -> int:
        return self.rows * self.cols

    @property
    def hardware(self) -> str:
        return f"{self.rows}x{self.cols} array"

    def with_mac_units(self, n: int):
        """The squarest ``rows x cols = n`` array (``rows >= cols``: rows are the reduction)."""
        cols = max(c for c in range(1, int(n ** 0.5) + 1) if n % c == 0)
        return dataclasses.replace(self, rows=n // cols, cols=cols)

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

        ``rows`` skew/array stages, ``cols`` array/de-skew stages, the PEs' product
        register, one partial-sum accumulate stage, the ``requant_latency`` stages of the
        requantiser and the output FIFO's write.
        """
        return 1 + self.rows + self.cols + 1 + self.fxp.requant_latency + 1

    @property
    def out_fifo_depth(self) -> int:
        """Output FIFO entries: every vector in flight has a place reserved, so the FIFO
        must cover the pipeline for the array never to wait with ``out`` ready."""
        return 1 << (self.pipeline_latency + 2).bit_length()

    @property
    def bank_free_delay(self) -> int:
        """Cycles from a pass's last activation beat to the first cycle its bank (weight
        registers and command register) takes the command of the pass after next: the last
        partial-sum write is ``rows + cols + 2`` cycles after the beat and frees the bank on
        its clock edge."""
        return self.rows + self.cols + 3

    @staticmethod
    def pass_gap(count: int) -> int:
        """Least distance from the last activation beat of a pass of ``count`` vectors to the
        first beat of the next pass, ``max(1, 4 - count)``: vector ``j`` of the next pass
        then enters at least 3 cycles after vector ``j`` of this one, so it reads its partial
        sums after this pass has written them (``SystolicBlock``)."""
        return max(1, 4 - count)

    def _next_pass(self, state, count):
        """One step of the schedule recurrence. ``state`` holds the previous pass's command
        cycle, last weight beat, last activation beat and gap, and the last activation beat
        of the pass before it."""
        cmd, weights, last, gap, last2 = state
        cmd = max(cmd + 1, last2 + self.bank_free_delay)
        weights = max(cmd, weights) + self.rows  # rows beats from max(cmd + 1, weights + 1)
        first = max(weights + 2, last + gap)  # the last weight row enters the array first
        return cmd, weights, first + count - 1, self.pass_gap(count), last

    _START = (-1, -(1 << 62), -(1 << 62), 0, -(1 << 62))

    def pass_schedule(self, counts) -> list[tuple[int, int, int, int]]:
        """``(command, last weight beat, first activation beat, last activation beat)`` of
        every pass of ``counts`` vectors, run back to back with every input valid and
        ``out.ready`` high, cycle 0 being the first command (``SystolicBlock``'s schedule).
        """
        state, rows = self._START, []
        for n in counts:
            state = self._next_pass(state, int(n))
            rows.append((state[0], state[1], state[2] - int(n) + 1, state[2]))
        return rows

    def layer_cycles(self, runs) -> int:
        """First command beat to last output beat, inclusive, of passes run back to back
        (every input valid, ``out.ready`` high). ``runs``: ``(count, passes)`` pairs, passes
        of ``count`` vectors each, in order. The last output beat leaves ``pipeline_latency``
        cycles after the last activation beat.

        Exact and O(1) per run: the recurrence (``pass_schedule``) is max-plus, so once its
        state relative to the last activation beat repeats within a run of equal counts it
        repeats with the same period forever, and whole periods are skipped."""
        state, total = self._START, 0
        for count, passes in runs:
            count, passes = int(count), int(passes)
            total += passes
            seen = {}
            i = 0
            while i < passes:
                state = self._next_pass(state, count)
                i += 1
                last = state[2]
                key = tuple(v - last for v in state[:3]) + (state[4] - last,)
                if key in seen:
                    j, last_j = seen[key]
                    periods = (passes - i) // (i - j)
                    shift = periods * (last - last_j)
                    state = (state[0] + shift, state[1] + shift, state[2] + shift, state[3],
                             state[4] + shift)
                    i += periods * (i - j)
                    seen = {}
                seen[key] = (i, state[2])
        if not total:
            return 0
        return state[2] + self.pipeline_latency + 1


@dataclass(frozen=True)
class CombinedConfig(SystolicConfig):
    """Column-combined systolic array (``hw.combined.CombinedBlock``, Kung et al. 2019).

    The dense array's fields and schedule, with ``rows`` counting *packed* rows (groups of up
    to ``alpha`` original reduction columns): each array row carries ``alpha`` activation
    lanes and each cell a ``sel_bits`` select. ``gamma`` (conflicts allowed per group, as a
    fraction of the output channels) and ``group_block`` (output channels per grouping
    block, 0 = one global grouping) are packing policy for the host and the simulator;
    they do not change the RTL. ``alpha = 1`` is the dense array.
    """

    alpha: int = bounded(8, 1, 64, why="original columns per packed row")
    gamma: float = field(default=0.5, metadata={"help": "conflicts allowed per group, as a "
                         "fraction of the output channels (packing policy, 0..1)"})
    group_block: int = bounded(0, 0, 1 << 16, why="0 groups all output channels together")

    block = "combined"

    def validate(self):
        super().validate()
        # a fraction, not an integer: outside what ``bounded`` declares
        if not isinstance(self.gamma, (int, float)) or not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be a number in 0..1, not {self.gamma!r}")

    @property
    def sel_bits(self) -> int:
        """Width of a cell's lane select, ``ceil(log2 alpha)``."""
        return ceil_log2(self.alpha)

    def dense(self) -> SystolicConfig:
        """The dense array of the same size (the baseline of speedups and energy ratios)."""
        return SystolicConfig(rows=self.rows, cols=self.cols, acc_depth=self.acc_depth,
                              fxp=self.fxp)


def config_from_dict(d: dict):
    """Rebuild a block config from ``to_dict()`` output (the JSON written beside the Verilog);
    the block's record (``zeroskip.blocks``) names its config class."""
    from zeroskip.blocks import get_block

    return get_block(d.get("block")).config.from_dict(d)


def config_to_json(cfg) -> str:
    return cfg.to_json()


SYSTOLIC_PRESETS = {
    "tiny": SystolicConfig(rows=4, cols=4, acc_depth=64),
    "default": SystolicConfig(rows=8, cols=8, acc_depth=256),
    "large": SystolicConfig(rows=32, cols=32, acc_depth=1024),
}

COMBINED_PRESETS = {
    "tiny": CombinedConfig(rows=4, cols=4, acc_depth=64, alpha=4),
    "default": CombinedConfig(rows=8, cols=8, acc_depth=256, alpha=8),
    "dense": CombinedConfig(rows=8, cols=8, acc_depth=256, alpha=1),
    "large": CombinedConfig(rows=32, cols=32, acc_depth=1024, alpha=8),
}


@dataclass(frozen=True)
class SnaPEAConfig(BlockConfig):
    """Early-termination block (``hw.snapea.SnaPEABlock``, Akhlaghi et al., ISCA 2018).

    ``lanes`` time-folded MAC lanes, each walking the windows of a tile through its own
    output channel's reordered non-zero weights, one tap per cycle. ``max_taps`` is the
    depth of each lane's weight/index buffer: longer kernels run in *segments* of
    ``max_taps`` taps whose partial sums wait in the lane's bank; ``act_depth`` the input
    buffer (one tile of the zero-padded input feature map, all its channels),
    ``max_windows`` each lane's bank (output pixels per tile), ``check_every`` how often
    the sign check runs (every k-th tap, k = 1 checks every tap); ``act_bank_depth`` splits
    the input buffer into banks of at most that many activations (16384: an ECP5 DP16KD's
    depth at 1 bit wide, so a bank's read data goes straight into a register; no effect on
    the schedule).

    The defaults fit an ECP5 LFE5U-85F (DP16KD block RAMs): a weight/index buffer
    of 512 taps is one block RAM (no depth cascade and its multiplexer after the RAM), so
    longer kernels (3 x 3 x 512 = 4608 taps in VGG-16 / ResNet-18) run in segments; a tile
    of at most 32768 input activations covers a row of output windows of every conv layer of
    VGG-16, ResNet-18 and AlexNet (wider rows are split into column tiles) and the whole
    input of VGG-16's fc6 (25088).
    """

    lanes: int = bounded(8, 1, 64, why="MAC lanes, one output channel each")
    max_taps: int = bounded(512, 1, 1 << 16, why="taps per lane buffer (weights and indices); "
                            "longer kernels run in segments")
    act_depth: int = bounded(32768, 1, 1 << 24, why="input buffer in activations: one tile "
                             "of the padded input, all channels")
    max_windows: int = bounded(1024, 1, 1 << 20, why="output pixels per tile (each lane's "
                               "partial-sum bank)")
    check_every: int = bounded(1, 1, 64, why="MACs between sign checks")
    act_bank_depth: int = bounded(16384, 1, 1 << 24, power_of_two=True,
                                  why="activations per input-buffer bank (no effect on cycles)")
    fxp: FixedPointConfig = field(default_factory=FixedPointConfig)

    block = "snapea"
    mac_units_field = "lanes"  # one MAC per lane

    @property
    def addr_bits(self) -> int:
        """Input-buffer address and index-buffer offset width."""
        return max(1, ceil_log2(self.act_depth))

    @property
    def act_banks(self) -> int:
        """Banks of the input buffer (``act_depth / act_bank_depth``, rounded up)."""
        return ceil_div(self.act_depth, self.act_bank_depth)

    @property
    def tap_bits(self) -> int:
        """Width of a tap count (holds 0..max_taps + 1: ``exact_from`` past a segment)."""
        return max(1, (self.max_taps + 1).bit_length())

    @property
    def window_bits(self) -> int:
        """Width of a window count (holds 0..max_windows)."""
        return max(1, self.max_windows.bit_length())

    # --- the cycle schedule (mirrored by sim.snapea and checked against the RTL) ---------
    # after issue (hw.snapea.EarlyTerminationLane): buffer read, address, address register,
    # input read, input register, bank selected, activation registered again, partial
    # products, product, accumulate, decide
    lane_stages = 10

    @property
    def lane_squash(self) -> int:
        """Cycles a lane spends after the tap that ends its window early before it issues
        the next window: the taps already in its ten stages (discarded) and the cycle in
        which the decision moves it on."""
        return self.lane_stages + 1

    @property
    def compute_tail(self) -> int:
        """Cycles of a command's COMPUTE phase after the slowest lane's last useful issue:
        the ten pipeline stages, the requantiser (whose output register is written to the
        bank) and the idle check: the lanes' busy registers, the block's, and the cycle
        that sees it."""
        return self.lane_stages + self.fxp.requant_latency + 3

    readout_latency = 3  # bank read, the lane's read-data register, the output register

    def window_cycles(self, taps, performed, early):
        """Issue cycles of one window: ``taps`` (the lane's taps in this segment) when it
        runs to the end, else the ``performed`` taps plus up to ``lane_squash`` discarded
        ones (never more than ``taps``). Works on numpy arrays."""
        import numpy as np

        return np.where(early, np.minimum(taps, performed + self.lane_squash), taps)

    def command_cycles(self, act_beats: int, taps: int, lane_cycles: int, windows: int,
                       readout: bool = True) -> int:
        """Cycles of one command (tile x lane group x segment), first command beat to last
        output beat (or to the end of COMPUTE without read-out) inclusive, with inputs
        always valid and ``out.ready`` high: 1 command + ``act_beats`` input beats +
        ``taps`` weight beats + 1 launch + the slowest lane's ``lane_cycles`` issue cycles +
        ``compute_tail`` + (on the last segment) ``readout_latency`` + ``windows`` output
        beats."""
        return (2 + act_beats + taps + lane_cycles + self.compute_tail
                + readout * (self.readout_latency + windows))


SNAPEA_PRESETS = {
    "tiny": SnaPEAConfig(lanes=2, max_taps=512, act_depth=2048, max_windows=64),
    "default": SnaPEAConfig(),
    "check4": SnaPEAConfig(check_every=4),
    "wide": SnaPEAConfig(lanes=32),
    "matched": SnaPEAConfig(lanes=64),  # as many MAC units as the default 8x8 systolic array
}


@dataclass(frozen=True)
class NullHopConfig(BlockConfig):
    """Sparse-feature-map block (``hw.nullhop.NullHopBlock``, Aimar et al., TNNLS 2018).

    ``macs`` MAC units (a power of two; NullHop has 128), ``macs_per_channel`` (M, 1..8) of
    them sharing one output channel by taking up to M non-zeros of one pixel (different
    input channels) at once, so a pass computes ``lanes = macs / M`` output channels;
    ``sm_bits`` the sparsity-map word width (a power of two; 16 in NullHop); ``kernel_depth``
    the kernel memory (entries of ``lanes`` weights: input channels x k x k of one pass);
    ``acc_depth`` the partial-sum memory (output pixels of one pass, before pooling);
    ``max_dim`` the largest input/output height or width of a pass and ``max_k`` the largest
    kernel (both set counter widths); ``psum_bank_depth`` splits the partial-sum memory into
    banks of at most that many rows (2048: an ECP5 DP16KD's depth at 9 bits wide, so a bank
    maps to block RAMs side by side and its read data goes straight into a register; no
    effect on the schedule). The stream format is ``sim.sparse_format``.

    Cycle schedule of one pass of ``hw.nullhop.NullHopBlock`` (``pass_cycles``;
    ``sim.nullhop`` mirrors it, the RTL tests check it),
    every input valid and ``act_out`` ready:
      - IDLE, 1 cycle: the command is accepted; PRIME, ``prime_cycles`` (3): the pass's
        constants and the first input row's kernel rows are worked out;
      - LOAD, one cycle per weight beat (skipped when ``load`` is 0);
      - input phase: FETCH takes one word per cycle (a value word of ``values_per_word``
        V > 1 values is held, ``act_in.ready`` low, until its last value is used: each value
        is "taken" in the cycles below as if it had its own word). Each SM word is followed
        by ``decode_cycles`` (3) DECODE cycles that work out, for each of its S positions,
        the box of kernel offsets ``ky_first..ky_last`` x ``kx_first..kx_last`` (on the
        stride grid) that take a value there
        to an output of the pass and the box's first partial-sum and kernel addresses (the kernel
        rows of an input row are worked out in the background while the previous row streams). MAC
        walks a value's box, one offset per cycle, all ``lanes`` output channels in parallel, and
        its last cycle already takes the next word. So a non-zero costs ``ny * nx`` cycles (``k*k``
        inside the map, fewer at borders, band edges and for strides > 1), a non-zero whose box is
        empty ("dead") costs its fetch cycle only, every SM word 1 + 3 cycles, one less if it
        directly follows a value with a non-empty box, and one more FETCH cycle sees the end of the
        input. Zero activations cost no MAC cycle and every MAC cycle is a useful
        multiply-accumulate. A MAC cycle reads the partial sums and the kernel row; the products are
        formed over the next three cycles and added and written back in the fifth (stages P1, P2,
        P2b, P3); an update of the same pixel up to four cycles later takes the newer sum from the
        pipeline (the read port is not transparent);
      - with ``macs_per_channel`` M > 1, a value word starts a *group*: the next non-zeros
        of the same block of ``min(Cp, S)`` positions (the same pixel, other input channels)
        join it, up to M, one COLLECT cycle each; the MAC cycles then multiply all M values
        (empty slots hold 0) with their own kernel rows (M kernel-memory read ports) and add
        the M products into the one partial sum per output channel;
      - output phase (if ``emit``), after ``drain_cycles`` (3) DRAIN cycles: the output is
        sent as chunks (S positions of a row, or the row's end), values packed V to a
        word. A walker reads (and clears) the partial sums of one chunk's pixels, one read
        per cycle (4 per pixel with pooling); they pass the requantiser and the max-pool
        into the fill buffer, complete ``fill_latency`` (12)
        cycles after the walker started plus one cycle per read (``part_fill`` (2) cycles
        for the further chunks of a pixel wider than S, which need no read:
        ``NullHopConfig.chunk_fills``). The send buffer offers the
        chunk's SM word, then its ``vw = ceil(nnz / V)`` value words, one word per cycle. The
        fill buffer moves to the send buffer in the cycle the send buffer's last word leaves
        (or when it is empty) and the walker starts the next chunk in the cycle after, so
        chunk j leaves ``max(1 + vw(j - 1), fill(j))`` cycles after chunk j - 1
        (``output_cycles``). The pass ends with its final output word; the next command is
        accepted in the following cycle (passes never overlap).
    A non-emitting pass ends after its end-of-input cycle and keeps its partial sums, so the
    next pass (the next input-channel tile) accumulates onto them.
    Stalls (``valid`` low, ``ready`` low) only add cycles: every state waits for its beat.
    """

    macs: int = bounded(8, 1, 256, power_of_two=True, why="MAC units")
    macs_per_channel: int = field(default=1, metadata={"help": "MAC units per output channel: "
                                  "1, 2, 4 or 8, at most macs"})
    sm_bits: int = bounded(16, 2, 64, power_of_two=True, why="sparsity-map word width in bits")
    kernel_depth: int = bounded(1024, 1, 1 << 20, why="kernel memory rows (weights of a pass)")
    acc_depth: int = bounded(4096, 1, 1 << 20, why="partial-sum memory rows: output pixels "
                             "per pass")
    max_dim: int = bounded(256, 1, 1 << 14, why="largest feature-map height or width")
    max_k: int = bounded(11, 1, 15, why="largest kernel size")
    psum_bank_depth: int = bounded(2048, 1, 1 << 20, power_of_two=True,
                                   why="partial-sum rows per memory bank (no effect on cycles)")
    fxp: FixedPointConfig = field(default_factory=FixedPointConfig)

    block = "nullhop"
    mac_units_field = "macs"

    @property
    def hardware(self) -> str:
        return f"{self.macs} MACs ({self.lanes} output channels x {self.macs_per_channel})"

    def validate(self):
        if self.macs_per_channel not in (1, 2, 4, 8) or self.macs_per_channel > self.macs:
            raise ValueError(f"macs_per_channel must be 1, 2, 4 or 8 and at most macs "
                             f"({self.macs}), not {self.macs_per_channel!r}")

    # --- derived widths -------------------------------------------------------------------
    @property
    def word_bits(self) -> int:
        """Data width of a stream word: an SM word or ``values_per_word`` packed values."""
        return max(self.sm_bits, self.fxp.act_bits)

    @property
    def values_per_word(self) -> int:
        """Values in one value word (``sim.sparse_format.values_per_word``)."""
        return self.word_bits // self.fxp.act_bits

    @property
    def dim_bits(self) -> int:
        """Width of a command's row/column counts (``in_h``, ``in_w``, ``out_h``, ``out_w``)."""
        return max(1, self.max_dim.bit_length())

    @property
    def k_bits(self) -> int:
        """Width of a command's kernel size and paddings (``k``, ``pad_top``, ``pad_left``)."""
        return max(1, self.max_k.bit_length())

    @property
    def slices_bits(self) -> int:
        """Width of a command's input-slice count (up to ``kernel_depth``)."""
        return max(1, self.kernel_depth.bit_length())

    @property
    def kernel_addr_bits(self) -> int:
        """Width of a kernel-memory word count (up to ``kernel_depth * max_k**2``)."""
        return max(1, (self.kernel_depth * self.max_k * self.max_k).bit_length())

    @property
    def position_bits(self) -> int:
        """Width of a position count along an input row (all slices, plus one SM word)."""
        return max(1, (self.kernel_depth * self.max_dim + self.sm_bits).bit_length())

    @property
    def psum_count_bits(self) -> int:
        """Width of a count of partial-sum entries (up to ``acc_depth``)."""
        return max(1, self.acc_depth.bit_length())

    @property
    def kernel_mem_addr_bits(self) -> int:
        """Width of a kernel-memory RAM address (``ceil_log2(kernel_depth)``)."""
        return ceil_log2(self.kernel_depth)

    @property
    def psum_addr_bits(self) -> int:
        """Width of a partial-sum memory address (up to ``acc_depth - 1``)."""
        return max(1, (self.acc_depth - 1).bit_length())

    @property
    def slice_log2_bits(self) -> int:
        """Width of a command's ``slice_log2`` (the slice count Cp is ``1 << slice_log2``)."""
        return max(1, ceil_log2(self.kernel_depth).bit_length())

    @property
    def group(self) -> int:
        """Values moved into the encoder's chunk register per fill cycle (``min(lanes, S)``)."""
        return min(self.lanes, self.sm_bits)

    @property
    def lanes(self) -> int:
        """Output channels per pass, ``macs / macs_per_channel``."""
        return self.macs // self.macs_per_channel

    @property
    def parts(self) -> int:
        """Fill cycles per output pixel (``lanes / group``)."""
        return self.lanes // self.group

    @property
    def psum_banks(self) -> int:
        """Banks of the partial-sum memory (``acc_depth / psum_bank_depth``, rounded up)."""
        return ceil_div(self.acc_depth, self.psum_bank_depth)

    @property
    def sm_log2(self) -> int:
        """log2 of ``sm_bits``: the width of a position within an SM word."""
        return ceil_log2(self.sm_bits)

    @property
    def block_log2_bits(self) -> int:
        """Width of a pass's group-block log2 (``min(slice_log2, sm_log2)``, up to ``sm_log2``)."""
        return max(1, ceil_log2(self.sm_bits + 1))

    @property
    def coord_bits(self) -> int:
        """Width of a padded input coordinate and its kernel-range arithmetic (``x + pad``)."""
        return self.dim_bits + self.k_bits + 4

    @property
    def psum_step_bits(self) -> int:
        """Width of the partial-sum addresses worked out by increments (box walk, walker)."""
        return self.psum_count_bits + 4

    @property
    def kernel_offset_bits(self) -> int:
        """Width of a kernel offset ``kx``/``ky`` and of its box's ends (one above ``k_bits``)."""
        return self.k_bits + 1

    @property
    def kernel_range_bits(self) -> int:
        """Width of a signed first/last kernel offset on the stride grid (first > last: none)."""
        return self.k_bits + 2

    @property
    def kernel_area_bits(self) -> int:
        """Width of a pass's ``k * k``."""
        return 2 * self.k_bits

    @property
    def stride_bits(self) -> int:
        """Width of a pass's stride ``1 << stride_log2`` (up to 8)."""
        return 4

    @property
    def stride_mask_bits(self) -> int:
        """Width of a pass's ``stride - 1``."""
        return self.stride_bits - 1

    @property
    def top_bits(self) -> int:
        """Width of the input coordinate of a pass's last output, ``(out - 1) << stride_log2``."""
        return self.dim_bits + 3

    @property
    def kernel_row_step_bits(self) -> int:
        """Width of ``k << stride_log2``, the box walk's kernel-offset step to the next row."""
        return self.k_bits + 3

    # --- the cycle schedule (mirrored by sim.nullhop and checked against the RTL) ----------
    prime_cycles = 3  # after the command: pass constants, the first row's kernel rows
    decode_cycles = 3  # after each SM word: the chunk's kernel boxes and addresses
    drain_cycles = 3  # after the input, before the output phase: the last update lands
    part_fill = 2  # walker start -> fill buffer complete, a pixel's further chunks

    @property
    def fill_latency(self) -> int:
        """The walker's last read of a chunk -> its fill buffer complete: the registered
        read, the data, its register, the requantiser, the max-pool, the fill."""
        return 3 + self.fxp.requant_latency + 2

    def chunk_fills(self, pixels, pool: bool, part):
        """Cycles from the walker's start to a complete fill buffer, per chunk: ``pixels``
        pooled pixels read (1 or 4 reads each), or ``part_fill`` for a pixel's further
        chunks (``part > 0``). Works on numpy arrays."""
        import numpy as np

        return np.where(np.asarray(part) > 0, self.part_fill,
                        np.asarray(pixels) * (4 if pool else 1) + self.fill_latency)

    @staticmethod
    def output_cycles(vwords, fills) -> int:
        """The output phase of a pass (first walker cycle to the final output word,
        inclusive) from its chunks in order: ``vwords[j]`` value words (``ceil(nnz /
        values_per_word)``), ``fills[j]`` fill time (``chunk_fills``). Chunk j leaves
        ``max(1 + vwords[j-1], fills[j])`` cycles after chunk j - 1; the first leaves
        ``fills[0]`` cycles after the walker starts, and the last needs ``1 + vwords`` cycles
        for its SM word and value words."""
        import numpy as np

        vw, fills = np.asarray(vwords), np.asarray(fills)
        return int(fills[0] + np.maximum(1 + vw[:-1], fills[1:]).sum() + vw[-1] + 1)

    def pass_cycles(self, *, weight_beats, load, mac_cycles, sm_words, dead_values,
                    last_no_mac, emit, output=0, collected=0):
        """Cycles of one pass, command beat to its last output word (or to its end-of-input
        cycle when it does not emit), inclusive, with inputs always valid and ``out`` ready:

        1 command + ``prime_cycles`` + ``weight_beats`` (if ``load``) + input phase (+
        ``drain_cycles`` + ``output`` (``output_cycles``) if ``emit``). The input phase is
        ``mac_cycles`` (each non-zero value spends one cycle per kernel offset that takes it
        to an output of the pass) + one cycle per input word not taken in the last MAC cycle
        of a value: ``sm_words + dead_values + 1 - last_no_mac`` (``dead_values`` are
        non-zeros that reach no output, ``last_no_mac`` whether the final word is an SM word
        or such a value) + ``decode_cycles`` per SM word + 1 end-of-input cycle. With
        ``macs_per_channel`` M > 1 a value starts a *group* of up to M consecutive non-zeros
        of one pixel (one block of ``min(Cp, S)`` positions); each further value of a group
        costs one cycle (``collected``), ``mac_cycles`` counts groups' offsets and
        ``dead_values`` dead groups.
        """
        # written with * and + only, so numpy arrays of passes work as well as ints
        return (1 + self.prime_cycles + weight_beats * load + mac_cycles
                + sm_words * (1 + self.decode_cycles) + dead_values + collected
                + 2 - last_no_mac * 1 + emit * (self.drain_cycles + output))


NULLHOP_PRESETS = {
    "tiny": NullHopConfig(macs=4, sm_bits=8, kernel_depth=512, acc_depth=128, max_dim=32,
                          max_k=5),
    "default": NullHopConfig(),
    # NullHop's own size: 128 MACs, 16-bit SM words; buffers sized for VGG-16's layers
    "paper": NullHopConfig(macs=128, sm_bits=16, kernel_depth=4608, acc_depth=8192,
                           max_dim=256, max_k=11),
}
