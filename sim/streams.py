"""Deterministic stream-handshake patterns shared by the step models and the testbenches.

A ``Pattern`` says, for each cycle, whether a source offers a beat (``valid``) or a sink
accepts one (``ready``). The cocotb drivers and the step-per-cycle models consult the same
pattern, so a run with idle cycles and backpressure is still predicted cycle for cycle.
"""

from __future__ import annotations

import zlib

import numpy as np


class Pattern:
    """``pattern(t)`` is True with probability ``p`` per cycle, from a seeded stream."""

    def __init__(self, p: float = 1.0, seed: int = 0, name: str = ""):
        if not 0.0 < p <= 1.0:
            raise ValueError(f"a handshake probability must be in (0, 1], not {p!r}")
        self.p = p
        self._rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        self._bits = np.zeros(0, dtype=bool)

    def __call__(self, t: int) -> bool:
        if self.p >= 1.0:
            return True
        while t >= len(self._bits):
            self._bits = np.concatenate([self._bits, self._rng.random(4096) < self.p])
        return bool(self._bits[t])


ALWAYS = Pattern(1.0)


class Source:
    """A stream source following the transfer rules: once it raises ``valid`` it holds the
    beat until the sink takes it; otherwise it offers the next beat when its pattern says so."""

    def __init__(self, beats, pattern: Pattern = ALWAYS):
        self.beats = list(beats)
        self.pos = 0
        self.pattern = pattern
        self.holding = False

    @property
    def done(self) -> bool:
        return self.pos >= len(self.beats)

    def valid(self, t: int) -> bool:
        if self.done:
            return False
        if not self.holding:
            self.holding = self.pattern(t)
        return self.holding

    def payload(self):
        return self.beats[self.pos]

    def advance(self) -> None:
        """Called after a cycle whose ``valid`` and ``ready`` were both high."""
        self.pos += 1
        self.holding = False


def handshake_patterns(valid_p: float, ready_p: float, seed: int,
                       sources=("cmd", "weights", "acts"), sinks=("out",)) -> dict[str, Pattern]:
    """One independent pattern per port name: sources get ``valid_p``, sinks ``ready_p``."""
    pats = {name: Pattern(valid_p, seed, name) for name in sources}
    pats.update({name: Pattern(ready_p, seed, name) for name in sinks})
    return pats
