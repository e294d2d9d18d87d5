"""SCALE-Sim topology files (``--topology FILE.csv``) as layer shapes.

Two formats, told apart by their column count (a header row is optional, a trailing comma
on every row is allowed, as SCALE-Sim writes it):

- conv: ``Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels,
  Num Filter, Strides,``. The IFMAP is the padded input (SCALE-Sim has no padding field), so
  every layer has ``pad = 0``; filters must be square (the blocks' layers are).
- GEMM: ``Layer, M, N, K,``: ``out[M, N] = A[M, K] @ W[K, N]``, a 1x1 convolution on an
  ``M x 1`` map with ``K`` input and ``N`` output channels (``ConvLayer.gemm == (M, K, N)``),
  the same mapping SCALE-Sim uses.

A topology has no weights, activations or activation functions: every layer is taken with a
ReLU, and its data come from the seeded activation model of ``sim/workload.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from zeroskip.models.workloads import ConvLayer

CONV_FIELDS = ("Layer name", "IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width",
               "Channels", "Num Filter", "Strides")
GEMM_FIELDS = ("Layer", "M", "N", "K")


def read_topology(path) -> tuple[list[ConvLayer], str]:
    """(layers, format) of a SCALE-Sim topology file; one ``ValueError`` line when it is
    missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--topology {str(p)!r}: no such file")
    try:
        rows = list(csv.reader(p.read_text().splitlines()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--topology {str(p)!r} is not a CSV text file: {e}") from None
    rows = [(i, [c.strip() for c in r]) for i, r in enumerate(rows, start=1)]
    rows = [(i, r[:-1] if r and r[-1] == "" else r) for i, r in rows if any(c for c in r)]
    if not rows:
        raise ValueError(f"--topology {str(p)!r} has no layers")
    width = len(rows[0][1])
    if width not in (len(CONV_FIELDS), len(GEMM_FIELDS)):
        raise ValueError(f"--topology {str(p)!r}: line {rows[0][0]} has {width} columns; "
                         f"SCALE-Sim's conv format has {len(CONV_FIELDS)} "
                         f"({', '.join(CONV_FIELDS)}) and its GEMM format "
                         f"{len(GEMM_FIELDS)} ({', '.join(GEMM_FIELDS)})")
    fmt = "conv" if width == len(CONV_FIELDS) else "gemm"
    if not rows[0][1][1].lstrip("-").isdigit():  # a header row
        rows = rows[1:]
    layers, names = [], set()
    for line, r in rows:
        if len(r) != width:
            raise ValueError(f"--topology {str(p)!r}: line {line} has {len(r)} columns, "
                             f"not {width} like the first")
        try:
            v = [int(c) for c in r[1:]]
        except ValueError:
            raise ValueError(f"--topology {str(p)!r}: line {line}: {', '.join(r[1:])} are not "
                             "all integers") from None
        name = r[0] or f"layer{len(layers) + 1}"
        if name in names:
            raise ValueError(f"--topology {str(p)!r}: line {line}: layer {name!r} appears "
                             "twice")
        names.add(name)
        try:
            if fmt == "conv":
                h, w, fh, fw, c, n, s = v
                if fh != fw:
                    raise ValueError(f"a {fh}x{fw} filter: only square filters are supported")
                layers.append(ConvLayer(name, c, n, h, w, k=fh, stride=s, pad=0))
            else:
                m, n, k = v
                layers.append(ConvLayer(name, k, n, m, 1, k=1))
        except ValueError as e:
            raise ValueError(f"--topology {str(p)!r}: line {line}: {e}") from None
    if not layers:
        raise ValueError(f"--topology {str(p)!r} has no layers")
    return layers, fmt


def load_workload(path):
    """The topology as a shape-only ``sim.workload.Workload``."""
    from zeroskip.sim.workload import shape_only

    layers, fmt = read_topology(path)
    how = "padded IFMAP, pad 0" if fmt == "conv" else "each GEMM as a 1x1 conv on an M x 1 map"
    wl = shape_only(Path(path).stem, layers, f"layer shapes from the SCALE-Sim {fmt} topology "
                    f"{path} ({how}; every layer taken with a ReLU)")
    return wl
