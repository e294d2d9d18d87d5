"""Per-action energy, Accelergy style: simulators count named actions, this table prices them.

Every default number cites its source. Absolute figures are 45 nm (Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014, Fig. 1.1.9): 8-bit int multiply
0.2 pJ, 8-bit add 0.03 pJ, 32-bit add 0.1 pJ, 32-bit multiply 3.1 pJ, 8 KB SRAM 10 pJ and
32 KB SRAM 20 pJ per 64-bit read, DRAM 1.3-2.6 nJ per 64-bit access.

Override any entry with a JSON file ``{"action": pJ, ...}`` (``load_table``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = ("compute", "buffers", "dram")


@dataclass(frozen=True)
class Action:
    pj: float
    category: str
    source: str


DEFAULT_TABLE: dict[str, Action] = {
    "mac": Action(0.3, "compute",
                  "Horowitz 2014: 8-bit multiply 0.2 pJ + 32-bit accumulate add 0.1 pJ"),
    "requant": Action(3.2, "compute",
                      "Horowitz 2014: 32x16 multiply (<= 32-bit multiply 3.1 pJ) + 32-bit add"),
    "compare": Action(0.03, "compute",
                      "Horowitz 2014: a sign/threshold check ~ an 8-bit add, 0.03 pJ"),
    "mux_select": Action(0.03, "compute",
                         "estimate: an 8-bit alpha:1 multiplexer ~ an 8-bit add, 0.03 pJ"),
    "reg_write_byte": Action(0.03, "buffers",
                             "estimate: writing an 8-bit PE register ~ an 8-bit add, 0.03 pJ"),
    "sram_read_byte": Action(2.5, "buffers", "Horowitz 2014: 32 KB SRAM, 20 pJ per 64-bit read"),
    "sram_write_byte": Action(2.5, "buffers",
                              "Horowitz 2014: 32 KB SRAM, 20 pJ per 64-bit access"),
    "small_sram_byte": Action(1.25, "buffers",
                              "Horowitz 2014: 8 KB SRAM, 10 pJ per 64-bit access"),
    "dram_byte": Action(250.0, "dram",
                        "Horowitz 2014: DRAM 1.3-2.6 nJ per 64-bit access, 2.0 nJ / 8 bytes"),
}


def load_table(path: str | Path | None = None) -> dict[str, Action]:
    """The default table, with entries overridden by a JSON file of ``{action: pJ}``."""
    table = dict(DEFAULT_TABLE)
    if path is None:
        return table
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"energy table {str(p)!r} is a folder; give a JSON file of "
                         "action -> pJ")
    try:
        override = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"energy table {str(p)!r} does not exist")
    except json.JSONDecodeError as e:
        raise ValueError(f"energy table {str(p)!r} is not valid JSON: {e}")
    if not isinstance(override, dict):
        raise ValueError(f"energy table {str(p)!r} must be a JSON object of action -> pJ")
    for name, pj in override.items():
        if name not in table:
            raise ValueError(f"energy table {str(p)!r}: unknown action {name!r}; "
                             f"known actions: {', '.join(sorted(table))}")
        # JSON true/false are Python ints, and NaN / 1e400 parse as floats that are no price
        if isinstance(pj, bool) or not isinstance(pj, (int, float)) or not (
                math.isfinite(pj) and pj >= 0):
            raise ValueError(f"energy table {str(p)!r}: {name} must be a finite number >= 0 "
                             f"(pJ), not {json.dumps(pj)}")
        old = table[name]
        table[name] = Action(float(pj), old.category, f"user table {p.name}")
    return table


def price(events: dict[str, float], table: dict[str, Action] | None = None) -> dict:
    """Energy of an action count: ``{"energy_pj": total, "breakdown": {category: pJ}}``."""
    table = table or DEFAULT_TABLE
    breakdown = {c: 0.0 for c in CATEGORIES}
    for name, count in events.items():
        if name not in table:
            raise KeyError(f"no energy for action {name!r}")
        breakdown[table[name].category] += float(count) * table[name].pj
    return {"energy_pj": sum(breakdown.values()), "breakdown": breakdown}
