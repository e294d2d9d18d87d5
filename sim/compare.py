"""The main job's comparison: every block on one workload with one energy table.

``run_blocks`` simulates, ``comparison_rows`` makes the per-block summary (speedup and
energy ratio against the dense systolic array), ``write_csv`` writes one row per
(block, layer), ``report_dict`` the JSON (``{"network", "workload", "blocks": {block:
NetworkReport.to_dict()}, "comparison": [...]}``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from zeroskip import blocks as registry

from .report import NetworkReport

BASELINE = "systolic"


def run_blocks(workload, table=None, blocks=None, progress=None) -> dict[str, NetworkReport]:
    """Simulate ``workload`` on each block's default configuration."""
    reports = {}
    for block in blocks or registry.names("simulator"):
        rec = registry.get_block(block, "simulator")
        cfg = rec.default
        reports[block] = rec.part("simulator").simulate_network(
            workload, cfg, table, progress=(lambda name, b=block: progress(b, name))
            if progress else None)
    return reports


def comparison_rows(reports: dict[str, NetworkReport]) -> list[dict]:
    base = reports[BASELINE].totals() if BASELINE in reports else None
    rows = []
    for block, rep in reports.items():
        t = rep.totals()
        row = {"block": block, "cycles": t["cycles"], "macs_dense": t["macs_dense"],
               "macs_performed": t["macs_performed"], "utilization": t["utilization"],
               "energy_pj": t["energy_pj"], **{f"energy_{k}_pj": v for k, v in
                                                t["energy_breakdown_pj"].items()},
               "accuracy": rep.accuracy}
        if base:
            row["speedup_vs_dense"] = base["cycles"] / t["cycles"] if t["cycles"] else None
            row["energy_ratio_vs_dense"] = (base["energy_pj"] / t["energy_pj"]
                                            if t["energy_pj"] else None)
        rows.append(row)
    return rows


def report_dict(workload, reports: dict[str, NetworkReport]) -> dict:
    return {"network": workload.name, "workload": workload.description,
            "images": workload.batch,
            "blocks": {b: r.to_dict() for b, r in reports.items()},
            "comparison": comparison_rows(reports)}


CSV_FIELDS = ["block", "layer", "cycles", "macs_dense", "macs_performed", "utilization",
              "energy_pj", "energy_compute_pj", "energy_buffers_pj", "energy_dram_pj"]


def write_csv(reports: dict[str, NetworkReport], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for block, rep in reports.items():
            d = rep.to_dict()
            for l in d["layers"] + [dict(d["totals"], name="total")]:
                b = l["energy_breakdown_pj"]
                w.writerow({"block": block, "layer": l["name"], "cycles": l["cycles"],
                            "macs_dense": l["macs_dense"], "macs_performed": l["macs_performed"],
                            "utilization": f"{l['utilization']:.6f}",
                            "energy_pj": f"{l['energy_pj']:.3f}",
                            "energy_compute_pj": f"{b['compute']:.3f}",
                            "energy_buffers_pj": f"{b['buffers']:.3f}",
                            "energy_dram_pj": f"{b['dram']:.3f}"})


def plot(reports: dict[str, NetworkReport], out_dir: Path, title: str) -> list[Path]:
    """Per-layer cycles, per-layer energy and per-layer speedup vs dense, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks = list(reports)
    names = [l.name for l in reports[blocks[0]].layers]
    x = np.arange(len(names))
    width = 0.8 / len(blocks)
    paths = []

    def bars(values_of, ylabel, fname, log=True, hline=None):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.2))
        for i, b in enumerate(blocks):
            ax.bar(x + (i - (len(blocks) - 1) / 2) * width, values_of(b), width, label=b)
        ax.set_xticks(x, names, rotation=60 if len(names) > 8 else 0, ha="right"
                      if len(names) > 8 else "center", fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        if hline is not None:
            ax.axhline(hline, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{title}: {ylabel}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    bars(lambda b: [l.cycles for l in reports[b].layers], "cycles per layer", "cycles.png")
    bars(lambda b: [l.energy_pj / 1e6 for l in reports[b].layers], "energy per layer (µJ)",
         "energy.png")
    if BASELINE in reports:
        base = [l.cycles for l in reports[BASELINE].layers]
        bars(lambda b: [c / l.cycles for c, l in zip(base, reports[b].layers)],
             "speedup vs dense systolic array", "speedup.png", log=False, hline=1.0)
    return paths
