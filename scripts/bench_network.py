"""Whole-network simulation speed of every registered block, from a cold process.

    .venv/bin/python scripts/bench_network.py                 # VGG-16, every block
    .venv/bin/python scripts/bench_network.py --network alexnet --blocks systolic

The parent starts a fresh Python interpreter (the cold process) that imports the project,
loads the workload with ``sim.workload.load`` and runs ``sim.compare.run_blocks`` one block
at a time on each block's "default" preset, the same work ``zeroskip run`` does. The child
reports per-block wall times; the parent measures the whole child (interpreter start,
imports, workload, every block) and its peak resident memory (``getrusage(RUSAGE_CHILDREN)``).
Blocks are those whose record (``zeroskip.blocks``) has a simulator.

The issue's budget: the whole VGG-16 on every block in <= 60 s and < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 60.0
BUDGET_RSS_GB = 4.0

# Runs in the cold child: one JSON line per block on stdout, then a final summary line.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from zeroskip.blocks import names
from zeroskip.sim import compare, workload
network, blocks = sys.argv[1], sys.argv[2:] or names("simulator")
t_import = time.perf_counter()
wl = workload.load(network)
t_load = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import,
                  "blocks": names("simulator")}), flush=True)
for b in blocks:
    t, c = time.perf_counter(), time.process_time()
    try:
        rep = compare.run_blocks(wl, blocks=[b])[b]
        row = {"layers": len(rep.layers), "cycles": rep.totals()["cycles"]}
    except Exception as e:  # a block still being written must not hide the others' figures
        row = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps({"block": b, "seconds": time.perf_counter() - t,
                      "cpu_s": time.process_time() - c, **row,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)
"""


def run(network: str, blocks: list[str]) -> dict:
    """One cold child process running ``blocks`` (all registered ones if empty)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, network, *blocks], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"benchmark child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    cpu = ru.ru_utime + ru.ru_stime - before.ru_utime - before.ru_stime
    # the child's own ru_maxrss (KiB on Linux), reported after each block: a running peak
    rss_mb = max([b["rss_mb"] for b in lines[1:]], default=0.0)
    return {"network": network, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb,
            "load_avg": os.getloadavg(), "head": lines[0], "blocks": lines[1:]}


def run_per_block(network: str, blocks: list[str]) -> dict:
    """Each block in its own cold process: per-block peak memory, and what each block's
    share of the cold-start cost is."""
    if not blocks:
        from zeroskip.blocks import names

        blocks = names("simulator")
    runs = [run(network, [b]) for b in blocks]
    for r in runs:
        r["blocks"][0]["process_wall_s"] = r["wall_s"]
        r["blocks"][0]["process_cpu_s"] = r["cpu_s"]
    return {"network": network, "wall_s": sum(r["wall_s"] for r in runs),
            "cpu_s": sum(r["cpu_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "load_avg": os.getloadavg(), "head": runs[0]["head"],
            "blocks": [r["blocks"][0] for r in runs], "per_block": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", default="vgg16",
                    help="network of models.workloads.NETWORKS (default vgg16)")
    ap.add_argument("--blocks", nargs="*", default=[],
                    help="blocks to run (default: every block with a simulator)")
    ap.add_argument("--per-block", action="store_true",
                    help="one cold process per block (per-block peak RSS; totals add up the "
                    "processes, so each pays its own start-up)")
    ap.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = ap.parse_args(argv)

    res = (run_per_block if args.per_block else run)(args.network, args.blocks)
    head = res["head"]
    print(f"network {res['network']}, blocks registered: {', '.join(head['blocks'])}")
    rss_title = "peak RSS MB" if res.get("per_block") else "RSS so far MB"
    print(f"{'block':<22}{'layers':>7}{'cycles':>16}{'wall s':>10}{'CPU s':>10}"
          f"{rss_title:>15}")
    for b in res["blocks"]:
        if "error" in b:
            print(f"{b['block']:<22}{'FAILED':>7}{'':>16}{b['seconds']:>10.2f}"
                  f"{b['cpu_s']:>10.2f}{b['rss_mb']:>15.0f}   {b['error']}")
            continue
        print(f"{b['block']:<22}{b['layers']:>7}{b['cycles']:>16,}{b['seconds']:>10.2f}"
              f"{b['cpu_s']:>10.2f}{b['rss_mb']:>15.0f}")
    blocks_s = sum(b["seconds"] for b in res["blocks"])
    blocks_cpu = sum(b["cpu_s"] for b in res["blocks"])
    print(f"{'(imports)':<22}{'':>7}{'':>16}{head['import_s']:>10.2f}")
    print(f"{'(workload load)':<22}{'':>7}{'':>16}{head['load_s']:>10.2f}")
    print(f"{'sum of blocks':<22}{'':>7}{'':>16}{blocks_s:>10.2f}{blocks_cpu:>10.2f}")
    total = "cold processes, summed" if res.get("per_block") else "cold process total"
    print(f"{total:<22}{'':>7}{'':>16}{res['wall_s']:>10.2f}{res['cpu_s']:>10.2f}"
          f"   (budget {BUDGET_S:.0f} s wall: {'OK' if res['wall_s'] <= BUDGET_S else 'OVER'})")
    gb = res["peak_rss_mb"] / 1024
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB"
          f"   (budget {BUDGET_RSS_GB:.0f} GiB: {'OK' if gb < BUDGET_RSS_GB else 'OVER'})")
    print("load average (1, 5, 15 min) after the run: "
          + ", ".join(f"{x:.2f}" for x in res["load_avg"])
          + f" on {os.cpu_count()} CPUs; CPU s counts every thread of the process, so it is"
          "\nless sensitive than wall s to other processes sharing the machine")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 1 if any("error" in b for b in res["blocks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
