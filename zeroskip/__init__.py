"""zeroskip: design, simulate and verify CNN accelerator blocks that skip useless work.

The installed package has one import name. Its parts live in the checkout's top-level folders:
``zeroskip.hw`` (hw/, Amaranth RTL and the configs), ``zeroskip.sim`` (sim/, the cycle-level
simulators), ``zeroskip.models`` (models/, torch networks and integer reference ops), and here
``zeroskip.blocks`` (the one record per block) and ``zeroskip.cli`` (the ``zeroskip`` command).
"""

import os
from contextlib import contextmanager
from pathlib import Path

__version__ = "0.1.0"


def cache_dir() -> Path:
    """Where trained weights and synthesis results are cached: ``$ZEROSKIP_CACHE``, default
    ``~/.cache/zeroskip``."""
    return Path(os.environ.get("ZEROSKIP_CACHE", Path.home() / ".cache" / "zeroskip"))


@contextmanager
def replacing(path):
    """A temporary name beside ``path`` to write to; it is moved onto ``path`` when the block
    ends without an error (removed otherwise), so no half-written file ever has the name."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` through ``replacing``."""
    with replacing(path) as tmp:
        tmp.write_text(text)
