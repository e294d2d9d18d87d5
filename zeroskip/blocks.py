"""The one record per block: every subcommand, the main job and the test matrix read it.

A block declares itself here, once: its config class and presets (``zeroskip.hw.config``),
its RTL top and stream layouts, its simulator, its RTL verifier and its extra command-line
options. A part a
block does not have is ``None``, and the commands that need that part neither list nor accept
the block (``names("rtl")``: the blocks ``gen`` and ``synth`` take).

Parts are named as ``"module:attribute"`` (or a module), imported on first use, so reading
the records costs no amaranth, torch or cocotb import. The simulator module of every block has
one API (``SIMULATOR_API``): ``plan_layer`` (the host's tiling into passes or commands),
``StepModel`` (the step-per-cycle model, the oracle), ``layer_cycles`` (the vectorised count
it is tested against), ``simulate_network(workload, cfg, table=None, progress=None) ->
NetworkReport`` and ``layer_outputs(layer_data, spec, fxp)``, the layer's integer output as
``zeroskip.models.reference.layer_forward`` computes it (pooled where the layer pools).
The verifier, ``verify_layer(cfg, layer, x, build_dir) -> {"outputs", "cycles"}``, lives with
the cocotb testbenches in a checkout's ``tb/`` (they stay out of the wheel).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Mapping

from zeroskip.hw import config as hwcfg

PARTS = ("rtl", "layouts", "simulator", "verifier", "cli")
SIMULATOR_API = ("plan_layer", "StepModel", "layer_cycles", "simulate_network", "layer_outputs")


@dataclass(frozen=True)
class Block:
    """What a block is made of. ``presets`` has at least ``"default"``."""

    name: str
    summary: str
    config: type
    presets: Mapping[str, hwcfg.BlockConfig]
    rtl: str | None = None  # "module:Component", built as Component(cfg)
    layouts: str | None = None  # "module:function", function(cfg) -> the streams' layouts
    simulator: str | None = None  # module with simulate_network and layer_outputs
    verifier: str | None = None  # "tb.module:function", from a checkout
    cli: str | None = None  # "module:function", function(subparsers) adds the block's options

    def __post_init__(self):
        if "default" not in self.presets:
            raise ValueError(f"block {self.name!r} has no 'default' preset")
        for preset in self.presets.values():
            if type(preset) is not self.config:
                raise ValueError(f"a preset of block {self.name!r} is a {type(preset).__name__}, "
                                 f"not a {self.config.__name__}")

    @property
    def default(self) -> hwcfg.BlockConfig:
        return self.presets["default"]

    def part(self, name: str):
        """The named part, imported (a module, or ``module:attribute``)."""
        ref = getattr(self, name)
        if ref is None:
            raise ValueError(f"block {self.name!r} has no {name}; blocks with one: "
                             f"{', '.join(names(name)) or '(none)'}")
        module, _, attr = ref.partition(":")
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod

    def component(self, cfg=None):
        """The block's top-level RTL component for ``cfg`` (default: the default preset)."""
        return self.part("rtl")(self.default if cfg is None else cfg)


BLOCKS: dict[str, Block] = {}


def register(block: Block) -> Block:
    if block.name in BLOCKS:
        raise ValueError(f"block {block.name!r} is declared twice")
    BLOCKS[block.name] = block
    return block


@contextlib.contextmanager
def registered(block: Block):
    """Declare ``block`` for the duration of a ``with`` (tests add a fake block this way)."""
    register(block)
    try:
        yield block
    finally:
        del BLOCKS[block.name]


def names(part: str | None = None) -> list[str]:
    """Blocks in declaration order; with ``part``, only those that have it."""
    if part is not None and part not in PARTS:
        raise ValueError(f"unknown block part {part!r}; parts: {', '.join(PARTS)}")
    return [n for n, b in BLOCKS.items() if part is None or getattr(b, part) is not None]


def get_block(name: str, part: str | None = None) -> Block:
    """The record of block ``name``; with ``part``, it must have that part."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; choose one of: {', '.join(names(part))}")
    block = BLOCKS[name]
    if part is not None and getattr(block, part) is None:
        raise ValueError(f"block {name!r} has no {part}; blocks with one: "
                         f"{', '.join(names(part))}")
    return block


def block_of(cfg) -> Block:
    """The record whose config class ``cfg`` is an instance of."""
    return get_block(cfg.block)


register(Block(
    "systolic", "dense weight-stationary systolic array (the baseline)",
    hwcfg.SystolicConfig, hwcfg.SYSTOLIC_PRESETS,
    rtl="zeroskip.hw.systolic:SystolicBlock", layouts="zeroskip.hw.layouts:systolic_layouts",
    simulator="zeroskip.sim.systolic",
    verifier="tb.systolic_cases:verify_layer"))
register(Block(
    "snapea", "early termination (Akhlaghi et al., SnaPEA, ISCA 2018)",
    hwcfg.SnaPEAConfig, hwcfg.SNAPEA_PRESETS,
    rtl="zeroskip.hw.snapea:SnaPEABlock", layouts="zeroskip.hw.layouts:snapea_layouts",
    simulator="zeroskip.sim.snapea",
    verifier="tb.snapea_cases:verify_layer", cli="zeroskip.commands.snapea:add_parser"))
register(Block(
    "combined", "column combining (Kung et al., ASPLOS 2019)",
    hwcfg.CombinedConfig, hwcfg.COMBINED_PRESETS,
    rtl="zeroskip.hw.combined:CombinedBlock", layouts="zeroskip.hw.layouts:combined_layouts",
    simulator="zeroskip.sim.combined",
    verifier="tb.combined_cases:verify_layer", cli="zeroskip.commands.combine:add_parser"))
register(Block(
    "nullhop", "sparse feature maps (Aimar et al., NullHop, TNNLS 2018)",
    hwcfg.NullHopConfig, hwcfg.NULLHOP_PRESETS,
    rtl="zeroskip.hw.nullhop:NullHopBlock", layouts="zeroskip.hw.layouts:nullhop_layouts",
    simulator="zeroskip.sim.nullhop",
    verifier="tb.nullhop_cases:verify_layer"))
