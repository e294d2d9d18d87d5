"""The testbench skeleton every block shares: a ``Case`` (what goes in, what must come out,
when) and a ``Scoreboard`` that checks a run against it.

A case is built on the pytest side from the integer torch reference and the block's step
model, stored as one ``.npz`` (``Case.save``) and reloaded inside the cocotb test
(``Case.load``). Every beat is its payload's bits as an integer (``hw.layouts.pack``), kept
as little-endian bytes so any width fits a plain array: ``in__<port>`` / ``out__<port>`` /
``mask__<port>`` are ``uint8 [beats, bytes]``, ``cycles__<port>`` the predicted cycle of
every output beat (absent where the step model does not predict them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: cycles the output stays watched, ready high, after the last expected beat: a block that
#: emits one beat too many does so within its pipeline depth
LINGER_CYCLES = 16


def to_bytes(values) -> np.ndarray:
    """Integers (any width) -> ``uint8 [n, bytes]``, little-endian."""
    values = [int(v) for v in values]
    width = max([1, *((v.bit_length() + 7) // 8 for v in values)])
    return np.array([list(v.to_bytes(width, "little")) for v in values],
                    np.uint8).reshape(len(values), width)


def from_bytes(rows: np.ndarray) -> list[int]:
    return [int.from_bytes(bytes(r), "little") for r in np.asarray(rows, np.uint8)]


@dataclass
class Case:
    """One run of a block.

    ``inputs``: port -> payloads to send, in order (the command stream first: its first
    transfer is cycle 0 of the prediction). ``outputs``: port -> payloads expected, from the
    integer torch reference. ``masks``: port -> the bits of each expected payload that carry
    data (padding lanes are not compared; default: all). ``cycles``: the step model's count
    from the first command to the last output beat, inclusive (-1: not predicted).
    ``out_cycles``: port -> the predicted cycle of every output beat. ``valid_p``,
    ``ready_p``, ``seed``: the handshake patterns (``sim.streams.handshake_patterns``);
    ``extra``: block-specific arrays (e.g. the AXI bus width).
    """

    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    cycles: int = -1
    out_cycles: dict[str, list[int]] = field(default_factory=dict)
    masks: dict[str, list[int]] = field(default_factory=dict)
    valid_p: float = 1.0
    ready_p: float = 1.0
    seed: int = 0
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def mask(self, port: str) -> list[int]:
        return self.masks.get(port) or [-1] * len(self.outputs[port])

    def arrays(self) -> dict[str, np.ndarray]:
        a = {"ports_in": np.array(list(self.inputs)), "ports_out": np.array(list(self.outputs)),
             "cycles": np.int64(self.cycles), "valid_p": np.float64(self.valid_p),
             "ready_p": np.float64(self.ready_p), "seed": np.int64(self.seed)}
        for port, beats in self.inputs.items():
            a[f"in__{port}"] = to_bytes(beats)
        for port, beats in self.outputs.items():
            a[f"out__{port}"] = to_bytes(beats)
            full = (1 << 8 * a[f"out__{port}"].shape[1]) - 1
            a[f"mask__{port}"] = to_bytes(m & full for m in self.mask(port))
        for port, cyc in self.out_cycles.items():
            a[f"cycles__{port}"] = np.asarray(cyc, np.int64)
        a.update({f"extra__{k}": np.asarray(v) for k, v in self.extra.items()})
        return a

    def save(self, path: Path) -> Path:
        np.savez(path, **self.arrays())
        return path

    @classmethod
    def load(cls, path) -> "Case":
        with np.load(path) as f:
            ins, outs = [str(p) for p in f["ports_in"]], [str(p) for p in f["ports_out"]]
            return cls(inputs={p: from_bytes(f[f"in__{p}"]) for p in ins},
                       outputs={p: from_bytes(f[f"out__{p}"]) for p in outs},
                       masks={p: from_bytes(f[f"mask__{p}"]) for p in outs},
                       out_cycles={p: f[f"cycles__{p}"].tolist() for p in outs
                                   if f"cycles__{p}" in f.files},
                       cycles=int(f["cycles"]), valid_p=float(f["valid_p"]),
                       ready_p=float(f["ready_p"]), seed=int(f["seed"]),
                       extra={k[len("extra__"):]: f[k] for k in f.files
                              if k.startswith("extra__")})


class Scoreboard:
    """Checks one run against its ``Case``: every output payload in order (the first mismatch
    with its index, got and want), no beat after the last expected one, every input beat
    taken, the total cycles and the cycle of every output beat where predicted.

    ``transfers`` is what ``tb.streams.StreamBench.run`` returns: port -> [(cycle, bits)]
    (bits ``None`` on input ports), outputs watched for ``LINGER_CYCLES`` past the last
    expected beat. ``describe(port, bits)`` renders a payload for messages (e.g. its lanes).
    """

    def __init__(self, case: Case, describe=None):
        self.case = case
        self.describe = describe or (lambda port, bits: f"{bits:#x}")

    def errors(self, transfers: dict, origin: int | None = None) -> list[str]:
        case, errs = self.case, []
        for port, want in case.outputs.items():
            got = transfers.get(port, [])
            for i, ((_, bits), w, m) in enumerate(zip(got, want, case.mask(port))):
                if bits & m != w & m:
                    bad = sum(g & mm != ww & mm for (_, g), ww, mm in zip(got, want,
                                                                         case.mask(port)))
                    errs.append(f"{port}: {bad} of {len(want)} beats differ from the integer "
                                f"reference; first at beat {i}: got "
                                f"{self.describe(port, bits & m)}, want "
                                f"{self.describe(port, w & m)}")
                    break
            if len(got) < len(want):
                errs.append(f"{port}: {len(got)} of {len(want)} expected beats arrived")
            elif len(got) > len(want):
                errs.append(f"{port}: {len(got) - len(want)} extra beat(s) after the last "
                            f"expected one, the first at cycle {got[len(want)][0]}: "
                            f"{self.describe(port, got[len(want)][1])}")
        for port, beats in case.inputs.items():
            taken = len(transfers.get(port, []))
            if taken != len(beats):
                errs.append(f"{port}: the block took {taken} of {len(beats)} input beats")
        if errs:
            return errs  # cycle counts of a run that went wrong say nothing more
        if origin is None:
            origin = transfers[next(iter(case.inputs))][0][0]
        last = max((transfers[p][len(w) - 1][0] for p, w in case.outputs.items() if w),
                   default=origin - 1)
        self.cycles = last - origin + 1
        if case.cycles >= 0 and self.cycles != case.cycles:
            errs.append(f"RTL took {self.cycles} cycles, the simulator predicted {case.cycles}")
        for port, want in case.out_cycles.items():
            got = [c - origin for c, _ in transfers[port][:len(want)]]
            if got != list(want):
                i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
                errs.append(f"{port}: beat {i} left at cycle {got[i]}, the step model "
                            f"predicted {want[i]}")
        return errs

    def check(self, transfers: dict, origin: int | None = None, log=None) -> None:
        errs = self.errors(transfers, origin)
        if log is not None and not errs:
            log.info("RTL took %d cycles; simulator predicted %s", self.cycles,
                     self.case.cycles if self.case.cycles >= 0 else "(no prediction)")
        assert not errs, "\n".join(errs)
