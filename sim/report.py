"""The report schema every block's simulator writes.

``{"block": ..., "config": {...}, "layers": [LayerReport...], "totals": {...}}``; each layer has
``name``, ``cycles``, ``macs_dense``, ``macs_performed``, ``utilization``, ``energy_pj``,
``energy_breakdown_pj`` ({compute, buffers, dram}), ``events`` (the action counts that were
priced) and block-specific figures under ``extra``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .energy import CATEGORIES, price


@dataclass
class LayerReport:
    name: str
    cycles: int
    macs_dense: int
    macs_performed: int
    mac_units: int
    events: dict[str, float]
    energy_pj: float = 0.0
    energy_breakdown_pj: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def utilization(self) -> float:
        """Useful MACs per MAC unit per cycle."""
        return self.macs_performed / (self.cycles * self.mac_units) if self.cycles else 0.0

    def priced(self, table=None) -> "LayerReport":
        e = price(self.events, table)
        self.energy_pj, self.energy_breakdown_pj = e["energy_pj"], e["breakdown"]
        return self

    def to_dict(self) -> dict:
        return {"name": self.name, "mac_units": int(self.mac_units), "cycles": int(self.cycles),
                "macs_dense": int(self.macs_dense), "macs_performed": int(self.macs_performed),
                "utilization": self.utilization, "energy_pj": self.energy_pj,
                "energy_breakdown_pj": dict(self.energy_breakdown_pj),
                "events": {k: float(v) for k, v in self.events.items()}, **self.extra}


@dataclass
class NetworkReport:
    block: str
    config: dict
    layers: list[LayerReport]
    notes: list[str] = field(default_factory=list)
    accuracy: float | None = None  # test accuracy, where the block changes the network's

    def totals(self) -> dict:
        cycles = sum(l.cycles for l in self.layers)
        macs = sum(l.macs_performed for l in self.layers)
        units = self.layers[0].mac_units if self.layers else 1
        breakdown = {c: sum(l.energy_breakdown_pj.get(c, 0.0) for l in self.layers)
                     for c in CATEGORIES}
        return {"mac_units": units, "cycles": cycles,
                "macs_dense": sum(l.macs_dense for l in self.layers),
                "macs_performed": macs,
                "utilization": macs / (cycles * units) if cycles else 0.0,
                "energy_pj": sum(l.energy_pj for l in self.layers),
                "energy_breakdown_pj": breakdown}

    def to_dict(self) -> dict:
        d = {"block": self.block, "config": self.config, "notes": list(self.notes),
             "layers": [l.to_dict() for l in self.layers], "totals": self.totals()}
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
        return d
