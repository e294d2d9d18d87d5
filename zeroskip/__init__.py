"""zeroskip: design, simulate and verify CNN accelerator blocks that skip useless work.

The installed package has one import name. Its parts live in the checkout's top-level folders:
``zeroskip.hw`` (hw/, Amaranth RTL and the configs), ``zeroskip.sim`` (sim/, the cycle-level
simulators), ``zeroskip.models`` (models/, torch networks and integer reference ops), and here
``zeroskip.blocks`` (the one record per block) and ``zeroskip.cli`` (the ``zeroskip`` command).
"""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_dir() -> Path:
    """Where trained weights and synthesis results are cached: ``$ZEROSKIP_CACHE``, default
    ``~/.cache/zeroskip``."""
    return Path(os.environ.get("ZEROSKIP_CACHE", Path.home() / ".cache" / "zeroskip"))
