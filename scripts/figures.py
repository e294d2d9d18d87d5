"""Regenerate the measured figures in README.md and docs/ from the code that produces them.

    .venv/bin/python scripts/figures.py                  # rewrite every figure in place
    .venv/bin/python scripts/figures.py --check          # exit 1 if a figure is not what the code gives
    .venv/bin/python scripts/figures.py --check --cheap  # only the cheap ones (the test suite runs this)
    .venv/bin/python scripts/figures.py main-job         # only the named figures

A figure is the region of a Markdown file between ``<!-- figure NAME: scripts/figures.py -->``
and ``<!-- /figure -->``; the script replaces what is between the two lines. Each figure states
the command a user can run to see the same numbers. Cheap figures (the digits net: seconds once
the net is trained and cached) are checked by the test suite, so a figure that drifts from the
code fails CI; the others take minutes (VGG-16 on every block) or need synthesis results
(``zeroskip synth`` / ``zeroskip run --synth``, cached by config hash); without a cached result
an area figure is left as it is and the check says so.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"^<!-- figure (?P<name>[\w-]+): scripts/figures\.py -->\n(?P<body>.*?)"
                  r"^<!-- /figure -->$", re.S | re.M)


class NotAvailable(Exception):
    """The figure's inputs are not here (e.g. no cached synthesis result)."""


@dataclass(frozen=True)
class Figure:
    name: str
    cheap: bool
    make: Callable[[], str]  # the Markdown between the markers


def _pct(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}%}".replace("%", " %")


def main_job(network: str = "digits") -> str:
    """The equal-MAC comparison ``zeroskip run`` prints (the simulation part of it)."""
    from zeroskip.cli import DEFAULT_IMAGES
    from zeroskip.sim import compare, workload

    configs = compare.equal_configs(compare.DEFAULT_MAC_UNITS)
    wl = workload.load(network, images=DEFAULT_IMAGES)
    rows = compare.comparison_rows(compare.run_blocks(wl, configs=configs))
    units = {r["mac_units"] for r in rows}
    assert len(units) == 1, units
    cmd = "zeroskip run" + ("" if network == "digits" else f" --network {network}")
    lines = [f"`{cmd}`: {wl.batch} image(s), every block on {units.pop()} MAC units; speedup "
             "and energy saving against the dense array; energy in µJ:", "",
             "| block | hardware | cycles | speedup | MAC util | energy | energy saving | "
             "compute | buffers | DRAM | accuracy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = r.get("accuracy")
        hardware = configs[r["block"]].hardware
        lines.append(
            f"| {r['block']} | {hardware} | {r['cycles']:,} | {r['speedup_vs_dense']:.2f}x | "
            f"{_pct(r['utilization'])} | {r['energy_pj'] / 1e6:.3f} | "
            f"{r['energy_saving_vs_dense']:.2f}x | {r['energy_compute_pj'] / 1e6:.3f} | "
            f"{r['energy_buffers_pj'] / 1e6:.3f} | {r['energy_dram_pj'] / 1e6:.3f} | "
            f"{'-' if acc is None else _pct(acc, 2)} |")
    return "\n".join(lines) + "\n"


def digits_accuracy() -> str:
    """What ``zeroskip digits`` prints: float and int8 test accuracy per clip rule."""
    from zeroskip.models import digits
    from zeroskip.models.quant import CLIP_RULES

    model = digits.trained_model()
    data = digits.load_data()
    lines = ["Measured with `zeroskip digits`:", "", "| | test accuracy |", "|---|---|",
             f"| float | {_pct(digits.float_accuracy(model, data.x_test, data.y_test), 2)} |"]
    for rule in CLIP_RULES:
        layers = digits.quantize_model(model, data.x_calib, rule)
        acc = digits.int_accuracy(layers, data.x_test, data.y_test)
        lines.append(f"| int8, `{rule}` clipping | {_pct(acc, 2)} |")
    return "\n".join(lines) + "\n"


def ecp5_defaults() -> str:
    """Each block's default configuration on ECP5, from the synthesis cache."""
    from zeroskip import blocks
    from zeroskip.commands import fpga

    lines = ["| block | LUT4 | FF | MULT18 | DP16KD | Fmax (MHz) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in blocks.names("rtl"):
        res = fpga.cached_synth(blocks.get_block(name).default, "ecp5")
        if res is None or res.get("fmax_mhz") is None:
            raise NotAvailable(f"no cached ECP5 result for {name}'s default configuration: "
                               f"run 'zeroskip synth {name} --target ecp5'")
        lines.append(f"| {name} | {res['luts']:,} | {res['ffs']:,} | {res['dsps']} | "
                     f"{res['brams']:g} | {res['fmax_mhz']:.2f} |")
    return "\n".join(lines) + "\n"


FIGURES = {f.name: f for f in [
    Figure("main-job", True, main_job),
    Figure("main-job-vgg16", False, lambda: main_job("vgg16")),
    Figure("digits-accuracy", True, digits_accuracy),
    Figure("ecp5-defaults", False, ecp5_defaults),
]}


def regions(files=None) -> list[tuple[Path, str]]:
    """(file, figure name) of every marked region in README.md and docs/*.md."""
    found = []
    for path in files or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in MARK.finditer(path.read_text()):
            found.append((path, m["name"]))
    return found


def update(names, check: bool, out=sys.stdout) -> int:
    """Regenerate the named figures; with ``check``, only compare. Returns the number of
    figures that differ (with ``check``) or that could not be made."""
    from zeroskip import write_atomic

    bad = 0
    made: dict[str, str] = {}
    for path, name in regions():
        if name not in names:
            continue
        if name not in FIGURES:
            print(f"{path.relative_to(ROOT)}: unknown figure {name!r}", file=out)
            bad += 1
            continue
        if name not in made:
            try:
                made[name] = FIGURES[name].make()
            except NotAvailable as e:
                print(f"{name}: left as it is ({e})", file=out)
                made[name] = None
        if made[name] is None:
            continue
        text = path.read_text()
        m = next(m for m in MARK.finditer(text) if m["name"] == name)
        if m["body"] == made[name]:
            print(f"{path.relative_to(ROOT)}: {name} is up to date", file=out)
            continue
        if check:
            bad += 1
            print(f"{path.relative_to(ROOT)}: {name} differs from what the code gives:", file=out)
            out.writelines(difflib.unified_diff(m["body"].splitlines(True),
                                                made[name].splitlines(True), "in the file",
                                                "from the code"))
        else:
            new = text[:m.start("body")] + made[name] + text[m.end("body"):]
            write_atomic(path, new)
            print(f"{path.relative_to(ROOT)}: {name} rewritten", file=out)
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"figures to make (default: all of "
                    f"{', '.join(FIGURES)})")
    ap.add_argument("--check", action="store_true",
                    help="only compare; exit 1 if a figure differs from what the code gives")
    ap.add_argument("--cheap", action="store_true", help="only the cheap (digits) figures")
    args = ap.parse_args(argv)
    for n in args.names:
        if n not in FIGURES:
            ap.error(f"unknown figure {n!r}; choose from {', '.join(FIGURES)}")
    names = set(args.names or FIGURES)
    if args.cheap:
        names = {n for n in names if FIGURES[n].cheap}
    return 1 if update(names, args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
