"""Random RTL cases for every block (``tb.random_cases``): random layer shapes, densities,
output ranges, handshake patterns (and SnaPEA's predictive parameters), each bit-exact against
the integer torch reference and cycle-exact (total and every output beat) against the step
model. Each test plays its cases in one simulation (the case player on Verilator); 112 cases
per block in all.

Seeds are reproducible: case ``i`` of a test comes from seed ``base + i``, ``base`` fixed per
test (shift every base with ``ZEROSKIP_RTL_SEED=N`` for other cases); a failure names each
failing case's seed, and ``tb.random_cases.MAKERS[block](cfg, seed)`` re-makes it.
"""

import os

import pytest

from zeroskip.hw.config import CombinedConfig, SystolicConfig
from tb import test_nullhop, test_snapea
from tb.random_cases import BENCHES, block_cases
from tb.runner import run_cases

CASES_PER_TEST = 28

CONFIGS = {
    "systolic": {"4x3": SystolicConfig(rows=4, cols=3, acc_depth=24),
                 "2x2": SystolicConfig(rows=2, cols=2, acc_depth=16)},
    "combined": {"4x3-a4": CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=4, gamma=0.5),
                 "2x3-a4": CombinedConfig(rows=2, cols=3, acc_depth=16, alpha=4, gamma=0.5)},
    "nullhop": {"4mac-sm8": test_nullhop.CONFIGS["4mac-sm8"],
                "16mac-M2": test_nullhop.CONFIGS["16mac-M2"]},
    "snapea": {"2lanes-chk3": test_snapea.CONFIGS["2lanes-chk3"],
               "3lanes-segments": test_snapea.CONFIGS["3lanes-segments"]},
}
RUNS = [(block, size, part) for block, sizes in CONFIGS.items() for size in sizes
        for part in range(2)]


def base_seed(block: str, size: str, part: int) -> int:
    shift = int(os.environ.get("ZEROSKIP_RTL_SEED", "0"))
    blocks, sizes = list(CONFIGS), list(CONFIGS[block])
    return shift + 1000 * (4 * blocks.index(block) + 2 * sizes.index(size) + part)


@pytest.mark.rtl
@pytest.mark.parametrize("block,size,part", RUNS, ids=[f"{b}-{s}-{p}" for b, s, p in RUNS])
def test_random_rtl_cases(block, size, part, tmp_path):
    cfg = CONFIGS[block][size]
    seed = base_seed(block, size, part)
    cases = block_cases(block, cfg, seed, CASES_PER_TEST)
    try:
        run_cases(cfg, BENCHES[block], cases, tmp_path)
    except AssertionError as e:
        raise AssertionError(f"random {block} cases on {size}, seeds {seed}.."
                             f"{seed + CASES_PER_TEST - 1} (re-make one with "
                             f"tb.random_cases.MAKERS[{block!r}](cfg, seed)):\n{e}") from None


def test_random_cases_cover_stalls_and_shapes():
    """The generator reaches what it claims on one test's seeds: runs without stalls, with
    input gaps and with backpressure, and layers of different shapes."""
    cases = block_cases("snapea", CONFIGS["snapea"]["2lanes-chk3"], 0, CASES_PER_TEST)
    assert any(c.valid_p < 1 for c in cases) and any(c.ready_p < 1 for c in cases)
    assert any(c.valid_p == c.ready_p == 1 for c in cases)
    assert len({len(c.inputs["acts"]) for c in cases}) > 10
