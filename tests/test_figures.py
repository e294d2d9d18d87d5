"""The README's and docs' cheap figures are what the code gives today (scripts/figures.py)."""

import importlib.util
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _figures():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["figures"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_marked_figure_is_known_and_cheap_ones_exist():
    figures = _figures()
    found = figures.regions()
    assert {name for _, name in found} <= set(figures.FIGURES)
    assert {"main-job", "digits-accuracy"} <= {name for _, name in found}


def test_cheap_figures_match_the_code():
    """A figure that drifts from what the code prints fails here; fix it with
    '.venv/bin/python scripts/figures.py'."""
    figures = _figures()
    out = io.StringIO()
    names = {n for n, f in figures.FIGURES.items() if f.cheap}
    assert figures.update(names, check=True, out=out) == 0, out.getvalue()
