"""Verilog generation: ``generate(block_config, out_dir)`` -> ``<top>.v`` + ``<top>.json``.

The JSON holds the config (``zeroskip.hw.config.config_from_dict`` rebuilds it) and the top-level
ports, so testbenches and FPGA flows reload exactly what the Verilog was built from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Value

from zeroskip import write_atomic

from .config import config_to_json


def block_component(cfg):
    """The top-level component of a block config (its block record names it)."""
    from zeroskip.blocks import block_of

    return block_of(cfg).component(cfg)


def generate(cfg, out_dir, name: str | None = None) -> Path:
    """Write ``<name>.v`` and ``<name>.json`` into ``out_dir``; returns the Verilog path.

    Regeneration is skipped when the same config was already written there.
    """
    name = name or f"zeroskip_{cfg.block}"
    return write_top(lambda: block_component(cfg), name, out_dir,
                     {"config": json.loads(config_to_json(cfg))})


def write_top(make_top, name: str, out_dir, key: dict, extra=lambda top: {}) -> Path:
    """Convert ``make_top()`` to ``<name>.v`` and write ``<name>.json`` (``key``, the top's
    ports and ``extra(top)``), unless a JSON with the same ``key`` entries is already there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vpath, jpath = out / f"{name}.v", out / f"{name}.json"
    if vpath.exists() and jpath.exists():
        try:
            old = json.loads(jpath.read_text())
            if all(old.get(k) == v for k, v in key.items()):
                return vpath
        except json.JSONDecodeError:
            pass
    top = make_top()
    text = compact_memory_init(verilog.convert(top, name=name, emit_src=False))
    ports = {path_name(path): {"dir": flow.name, "width": len(Value.cast(port))}
             for path, flow, port in _ports(top)}
    # each file under a temporary name, then moved: an interrupted run leaves no file that
    # looks whole, and the JSON (which makes a later call skip the work) goes last
    for path, content in ((vpath, text), (jpath, json.dumps(
            {"top": name, **key, **extra(top), "ports": ports}, indent=2))):
        write_atomic(path, content)
    return vpath


_ZERO_INIT = re.compile(r"^    (?P<mem>[A-Za-z_][A-Za-z0-9_$]*)\[(?P<i>\d+)\] = "
                        r"(?P<w>\d+)'h0+;$")


def compact_memory_init(text: str) -> str:
    """Amaranth's Verilog zero-initialises every memory element by element (``mem[0] =
    8'h00;`` ... one line per word: most of a large design's file); each such ``initial``
    block becomes one loop over the memory, which Icarus, Verilator and Yosys read the same
    way. Blocks that hold anything else are left as they are."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i] == "  initial begin":
            j = i + 1
            body = []
            while j < len(lines) and (m := _ZERO_INIT.match(lines[j])):
                body.append(m)
                j += 1
            mems = {(m["mem"], m["w"]) for m in body}
            if (body and j < len(lines) and lines[j] == "  end" and len(mems) == 1
                    and [int(m["i"]) for m in body] == list(range(len(body)))):
                mem, width = mems.pop()
                var = f"{mem}__init"
                out += [f"  integer {var};", "  initial begin",
                        f"    for ({var} = 0; {var} < {len(body)}; {var} = {var} + 1)",
                        f"      {mem}[{var}] = {width}'h0;", "  end"]
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def path_name(path) -> str:
    return "__".join(str(p) for p in path)


def _ports(top):
    for path, member, value in top.signature.flatten(top):
        yield path, member.flow, value
