"""Block name -> simulator module. Each module exposes
``simulate_network(workload, cfg, table=None, progress=None) -> sim.report.NetworkReport``
and ``layer_outputs(layer_data, spec, fxp)`` (the block's outputs for one layer, compared
against the integer reference)."""

import importlib

SIMULATORS = {
    "systolic": "zeroskip.sim.systolic",
    "snapea": "zeroskip.sim.snapea",
    "combined": "zeroskip.sim.combined",
    "nullhop": "zeroskip.sim.nullhop",
}


def simulator(block: str):
    try:
        return importlib.import_module(SIMULATORS[block])
    except KeyError:
        raise ValueError(f"unknown block {block!r}; choose one of: {', '.join(SIMULATORS)}")
