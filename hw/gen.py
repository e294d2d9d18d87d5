"""Verilog generation: ``generate(block_config, out_dir)`` -> ``<top>.v`` + ``<top>.json``.

The JSON holds the config (``zeroskip.hw.config.config_from_dict`` rebuilds it) and the top-level
ports, so testbenches and FPGA flows reload exactly what the Verilog was built from.
"""

from __future__ import annotations

import json
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Value

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
    text = verilog.convert(top, name=name, emit_src=False)
    ports = {path_name(path): {"dir": flow.name, "width": len(Value.cast(port))}
             for path, flow, port in _ports(top)}
    # each file under a temporary name, then moved: an interrupted run leaves no file that
    # looks whole, and the JSON (which makes a later call skip the work) goes last
    for path, content in ((vpath, text), (jpath, json.dumps(
            {"top": name, **key, **extra(top), "ports": ports}, indent=2))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
    return vpath


def path_name(path) -> str:
    return "__".join(str(p) for p in path)


def _ports(top):
    for path, member, value in top.signature.flatten(top):
        yield path, member.flow, value
