"""Block name -> simulator module. Each module exposes
``simulate_network(workload, cfg, table=None, progress=None) -> sim.report.NetworkReport``
and ``layer_outputs(layer_data, spec, fxp)`` (the block's outputs for one layer, compared
against the integer reference)."""

import importlib

SIMULATORS = {
    "systolic": "sim.systolic",
    "snapea": "sim.snapea",
    "combined": "sim.combined",
    "nullhop": "sim.nullhop",
}


def simulator(block: str):
    try:
        return importlib.import_module(SIMULATORS[block])
    except KeyError:
        raise ValueError(f"unknown block {block!r}; choose one of: {', '.join(SIMULATORS)}")
