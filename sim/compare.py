"""The main job's comparison: every block on one workload with one energy table.

``run_blocks`` simulates, ``comparison_rows`` makes the per-block summary (``speedup_vs_dense`` and
``energy_saving_vs_dense``, both how many times better than the dense systolic array), ``write_csv`` writes one row per
(block, layer), ``report_dict`` the JSON (``{"network", "workload", "blocks": {block:
NetworkReport.to_dict()}, "comparison": [...]}``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from zeroskip import blocks as registry
from zeroskip import replacing

from .report import NetworkReport

BASELINE = "systolic"


DEFAULT_MAC_UNITS = 64  # the dense 8x8 array


def equal_configs(mac_units: int | None = DEFAULT_MAC_UNITS, presets: dict | None = None,
                  blocks=None) -> dict:
    """One configuration per block with a simulator: its preset (``presets[block]``, else
    ``default``) reshaped to ``mac_units`` MAC units (``with_mac_units``), or the preset as
    it is when ``mac_units`` is None. A block that cannot take that many raises
    ``ValueError`` naming it and why."""
    presets = presets or {}
    names = list(blocks or registry.names("simulator"))
    for block in presets:
        if block not in names:
            raise ValueError(f"--preset {block}=...: no such block with a simulator; "
                             f"choose one of: {', '.join(names)}")
    configs = {}
    for block in names:
        rec = registry.get_block(block, "simulator")
        name = presets.get(block, "default")
        if name not in rec.presets:
            raise ValueError(f"unknown preset {name!r} for {block}; choose one of: "
                             f"{', '.join(rec.presets)}")
        cfg = rec.presets[name]
        if mac_units is not None:
            try:
                cfg = cfg.with_mac_units(mac_units)
            except ValueError as e:
                raise ValueError(f"{block} cannot run on {mac_units} MAC units: {e}") from None
        configs[block] = cfg
    return configs


def hardware_line(configs: dict) -> str:
    """What hardware each block had, in one line (for table headers and notes)."""
    return "; ".join(f"{b} {c.mac_units_description}" for b, c in configs.items())


def run_blocks(workload, table=None, blocks=None, progress=None,
               configs: dict | None = None) -> dict[str, NetworkReport]:
    """Simulate ``workload`` on each block: on ``configs[block]`` where given, else on the
    block's default configuration."""
    reports = {}
    for block in blocks or (configs and list(configs)) or registry.names("simulator"):
        rec = registry.get_block(block, "simulator")
        cfg = (configs or {}).get(block, rec.default)
        reports[block] = rec.part("simulator").simulate_network(
            workload, cfg, table, progress=(lambda name, b=block: progress(b, name))
            if progress else None)
    return reports


def comparison_rows(reports: dict[str, NetworkReport]) -> list[dict]:
    base = reports[BASELINE].totals() if BASELINE in reports else None
    rows = []
    for block, rep in reports.items():
        t = rep.totals()
        row = {"block": block, "mac_units": t["mac_units"], "cycles": t["cycles"],
               "macs_dense": t["macs_dense"],
               "macs_performed": t["macs_performed"], "utilization": t["utilization"],
               "energy_pj": t["energy_pj"], **{f"energy_{k}_pj": v for k, v in
                                                t["energy_breakdown_pj"].items()},
               "accuracy": rep.accuracy}
        if base:
            row["speedup_vs_dense"] = base["cycles"] / t["cycles"] if t["cycles"] else None
            row["energy_saving_vs_dense"] = (base["energy_pj"] / t["energy_pj"]
                                            if t["energy_pj"] else None)
        rows.append(row)
    return rows


def report_dict(workload, reports: dict[str, NetworkReport]) -> dict:
    return {"network": workload.name, "workload": workload.description,
            "images": workload.batch,
            "blocks": {b: r.to_dict() for b, r in reports.items()},
            "comparison": comparison_rows(reports)}


CSV_FIELDS = ["block", "mac_units", "layer", "cycles", "macs_dense", "macs_performed", "utilization",
              "energy_pj", "energy_compute_pj", "energy_buffers_pj", "energy_dram_pj"]


def write_csv(reports: dict[str, NetworkReport], path: Path) -> None:
    """One row per (block, layer) and a total per block; written under a temporary name,
    then moved into place."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for block, rep in reports.items():
            d = rep.to_dict()
            for l in d["layers"] + [dict(d["totals"], name="total")]:
                b = l["energy_breakdown_pj"]
                w.writerow({"block": block, "mac_units": l["mac_units"], "layer": l["name"],
                            "cycles": l["cycles"],
                            "macs_dense": l["macs_dense"], "macs_performed": l["macs_performed"],
                            "utilization": f"{l['utilization']:.6f}",
                            "energy_pj": f"{l['energy_pj']:.3f}",
                            "energy_compute_pj": f"{b['compute']:.3f}",
                            "energy_buffers_pj": f"{b['buffers']:.3f}",
                            "energy_dram_pj": f"{b['dram']:.3f}"})


# Okabe & Ito's palette: told apart with every common colour-vision deficiency
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000"]
ENERGY_HATCH = {"compute": "", "buffers": "//", "dram": ".."}


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """``fig`` as ``stem.png`` and ``stem.svg`` in ``out_dir``, each written whole, then
    closed; returns the two paths."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=110, format=ext)
        paths.append(path)
    plt.close(fig)
    return paths

def plot(reports: dict[str, NetworkReport], out_dir: Path, title: str,
         area: list[dict] | None = None, images: int | None = None) -> list[Path]:
    """Per-layer (and whole-network) cycles, energy split into compute / buffers / DRAM and
    speedup vs dense, plus the area view (throughput per 1,000 LUT4) where synthesis
    results exist; each as PNG and SVG. Titles state every block's MAC units and the
    number of images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks = list(reports)
    colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(blocks)}
    names = [l.name for l in reports[blocks[0]].layers] + ["network"]
    units = ", ".join(f"{b} {reports[b].totals()['mac_units']}" for b in blocks)
    imgs = f", {images} image(s)" if images else ""
    subtitle = f"MAC units: {units}{imgs}"
    x = np.arange(len(names))
    width = 0.8 / len(blocks)
    paths = []

    items = {}  # per block: each layer's figures, then the whole network's
    for b in blocks:
        d = reports[b].to_dict()
        items[b] = d["layers"] + [d["totals"]]

    def per_layer(b, key, cat=None):
        """Each layer's figure, then the whole network's."""
        return np.array([l[key] if cat is None else l[key].get(cat, 0.0) for l in items[b]])

    def save(fig, stem):
        paths.extend(save_figure(fig, out_dir, stem))

    def axes(ylabel):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.4))
        ax.set_xticks(x, names, rotation=60 if len(names) > 8 else 0,
                      ha="right" if len(names) > 8 else "center", fontsize=8)
        ax.axvline(len(names) - 1.5, color="grey", lw=0.6)  # layers | whole network
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {ylabel}\n{subtitle}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        return fig, ax

    def offset(i):
        return x + (i - (len(blocks) - 1) / 2) * width

    fig, ax = axes("cycles")
    for i, b in enumerate(blocks):
        ax.bar(offset(i), per_layer(b, "cycles"), width, label=b, color=colour[b])
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save(fig, "cycles")

    fig, ax = axes("energy (µJ): compute / buffers / DRAM")
    for i, b in enumerate(blocks):
        bottom = np.zeros(len(names))
        for cat, hatch in ENERGY_HATCH.items():
            v = per_layer(b, "energy_breakdown_pj", cat) / 1e6
            ax.bar(offset(i), v, width, bottom=bottom, color=colour[b], hatch=hatch,
                   edgecolor="white", lw=0.3, label=b if cat == "compute" else None)
            bottom += v
    from matplotlib.patches import Patch
    handles = ax.get_legend_handles_labels()[0] + [
        Patch(facecolor="grey", hatch=h, edgecolor="white", label=c)
        for c, h in ENERGY_HATCH.items()]
    ax.set_yscale("log")
    ax.legend(handles=handles, fontsize=7, ncol=2)
    save(fig, "energy")

    if BASELINE in reports:
        base = per_layer(BASELINE, "cycles")
        fig, ax = axes("speedup vs the dense systolic array")
        for i, b in enumerate(blocks):
            ax.bar(offset(i), base / np.maximum(per_layer(b, "cycles"), 1), width, label=b,
                   color=colour[b])
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
        save(fig, "speedup")

    done = [r for r in area or [] if r.get("images_per_s_per_1k_lut4")]
    if done:
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        ax.bar([r["block"] for r in done], [r["images_per_s_per_1k_lut4"] for r in done],
               color=[colour.get(r["block"], "grey") for r in done])
        for j, r in enumerate(done):
            ax.annotate(f"{r['luts']:,} LUT4\n{r['fmax_mhz']:.0f} MHz", (j, 0),
                        xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7,
                        color="white")
        ax.set_ylabel("images/s per 1,000 LUT4 at the measured Fmax")
        ax.set_title(f"{title}: equal area (ECP5)\n{subtitle}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        save(fig, "area")
    return paths
