"""AXI4-Stream top levels for every block: ``AxiTop(block_cfg)`` wraps the block's
``amaranth.lib.stream`` ports, so a new block needs no code here.

Port naming and packing (the contract an FPGA design or a host driver relies on):

- every stream input port ``P`` of the block becomes an AXI4-Stream slave ``s_axis_P_*``
  (``tdata``, ``tvalid``, ``tready``, ``tlast``), every stream output port ``P`` a master
  ``m_axis_P_*``; clock ``clk``, synchronous active-high reset ``rst``. Non-stream ports of a
  block (status bits) are passed through under their own names.
- one stream payload (a command, a weight row, an activation vector, an output vector ...)
  is the payload's bits, zero-extended to ``beats * data_bytes * 8`` bits and cut into
  ``beats`` beats, least significant beat first; inside a beat byte lane ``i`` is
  ``tdata[8*i+7:8*i]`` (AXI4-Stream byte order). ``data_bytes = min(ceil(bits / 8),
  max_bytes)`` and ``beats = ceil(bits / (8 * data_bytes))`` per port
  (``axi_ports`` lists them; the generated JSON records them). The payload's own bit layout is
  the block's ``hw.layouts`` layout (the only packing rule).
- ``tlast`` is high on the last beat of each payload on master ports. On slave ports the
  beat count is fixed by the width, so ``tlast`` is accepted and ignored (a source may drive
  it per payload, per pass or not at all).
- configuration (layer shape, weights, requantisation constants) travels on the block's own
  stream ports (for the dense array: ``s_axis_cmd`` and ``s_axis_weights``), so the whole
  interface is AXI4-Stream, with no register map.

Schedule: a slave port registers each payload (``AxiStreamDeserializer``: the payload is
valid the cycle after its last beat, and a new beat is accepted in the cycle the block
takes the previous payload, so one-beat ports run at one payload per cycle); a master port
has a skid buffer (one cycle, registered ``tready`` toward the block, full throughput) and
then ``AxiStreamSerializer`` (no cycles of its own). With one beat per payload on every port,
no idle source cycles and ``tready`` always high, a run therefore takes exactly
``AXI_LATENCY`` (= 2) cycles more than the bare block, first input beat to last output beat.
Backpressure and idle cycles anywhere never drop or duplicate a beat; they only cost cycles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from amaranth import Cat, Const, Module, Shape, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import ceil_div, config_to_json

DEFAULT_MAX_BYTES = 64  # 512-bit tdata at most, the widest bus common FPGA IP offers
AXI_LATENCY = 2  # cycles the wrapper adds: 1 in the slave register, 1 in the master skid


@dataclass(frozen=True)
class AxiPort:
    """One AXI4-Stream port of a top level and how a block payload is cut into beats."""

    port: str  # the block's stream port
    prefix: str  # s_axis_<port> or m_axis_<port>
    direction: str  # "in" (slave) or "out" (master)
    payload_bits: int
    data_bytes: int  # tdata width / 8
    beats: int  # beats per payload

    @property
    def data_bits(self) -> int:
        return 8 * self.data_bytes

    def to_beats(self, payload: int) -> bytes:
        """A payload's integer bits -> the bytes of its AXI4-Stream frame (beat 0 first)."""
        return int(payload).to_bytes(self.beats * self.data_bytes, "little")

    def from_beats(self, frame: bytes) -> int:
        value = int.from_bytes(bytes(frame), "little")
        if len(frame) != self.beats * self.data_bytes:
            raise ValueError(f"{self.prefix}: a payload is {self.beats * self.data_bytes} bytes, "
                             f"got a frame of {len(frame)}")
        return value & ((1 << self.payload_bits) - 1)


def _check_max_bytes(max_bytes) -> None:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValueError(f"the AXI4-Stream data width must be a positive number of bytes, "
                         f"not {max_bytes!r} (e.g. --axis-bytes 8 for a 64-bit tdata)")


def port_layout(bits: int, port: str, direction: str, max_bytes: int) -> AxiPort:
    _check_max_bytes(max_bytes)
    data_bytes = min(ceil_div(bits, 8), max_bytes)
    beats = ceil_div(bits, 8 * data_bytes)
    prefix = f"{'s' if direction == 'in' else 'm'}_axis_{port}"
    return AxiPort(port, prefix, direction, bits, data_bytes, beats)


def _stream_members(block):
    for name, member in block.signature.members.items():
        if member.is_signature and isinstance(member.signature, stream.Signature):
            shape = member.signature.members["payload"].shape
            yield name, member.flow, Shape.cast(shape).width


def axi_ports(cfg, max_bytes: int = DEFAULT_MAX_BYTES) -> list[AxiPort]:
    """The AXI4-Stream ports of ``cfg``'s block, in the block's port order."""
    from .gen import block_component

    block = block_component(cfg)
    block._MustUse__silence = True  # built only to read its signature
    return [port_layout(bits, name, "in" if flow == In else "out", max_bytes)
            for name, flow, bits in _stream_members(block)]


def axis_signature(data_bits: int, direction: str) -> dict:
    """Members of one AXI4-Stream port, seen from the module: a slave (``in``) receives."""
    d, u = (In, Out) if direction == "in" else (Out, In)
    return {"tdata": d(data_bits), "tvalid": d(1), "tready": u(1), "tlast": d(1)}


class AxiStreamDeserializer(wiring.Component):
    """AXI4-Stream slave -> ``amaranth.lib.stream`` source: collects ``beats`` beats of
    ``data_bits`` into one payload (least significant beat first).

    Schedule: the payload is valid in the cycle after its last beat and held until taken;
    ``tready`` is high while the payload register is empty or being taken, so with one beat
    per payload a payload can be accepted every cycle (one cycle of latency)."""

    def __init__(self, payload_shape, data_bits: int, beats: int):
        self._shape, self._w, self._n = payload_shape, data_bits, beats
        super().__init__({**axis_signature(data_bits, "in"),
                          "o": Out(stream.Signature(payload_shape))})

    def elaborate(self, platform):
        w, n = self._w, self._n
        bits = Shape.cast(self._shape).width
        m = Module()
        buf = Signal(w * n)
        full = Signal()
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(buf[:bits]),
                     self.tready.eq(~full | self.o.ready)]
        beat = self.tvalid & self.tready
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        if n == 1:
            with m.If(beat):
                m.d.sync += [buf.eq(self.tdata), full.eq(1)]
        else:
            idx = Signal(range(n))
            with m.If(beat):
                m.d.sync += buf.eq(Cat(buf[w:], self.tdata))  # beat 0 ends up lowest
                with m.If(idx == n - 1):
                    m.d.sync += [idx.eq(0), full.eq(1)]
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
        return m


class AxiStreamSerializer(wiring.Component):
    """``amaranth.lib.stream`` sink -> AXI4-Stream master: sends a payload as ``beats``
    beats of ``data_bits`` (least significant first), ``tlast`` on the last one.

    No cycles of its own: beat ``k`` of the payload on ``i`` is offered while ``i`` holds it,
    and ``i`` is taken with the last beat (so ``i`` must come from a register: ``SkidBuffer``)."""

    def __init__(self, payload_shape, data_bits: int, beats: int):
        self._shape, self._w, self._n = payload_shape, data_bits, beats
        super().__init__({"i": In(stream.Signature(payload_shape)),
                          **axis_signature(data_bits, "out")})

    def elaborate(self, platform):
        w, n = self._w, self._n
        bits = Shape.cast(self._shape).width
        m = Module()
        payload = Value.cast(self.i.payload)
        padded = Cat(payload, Const(0, w * n - bits)) if w * n > bits else payload
        m.d.comb += self.tvalid.eq(self.i.valid)
        if n == 1:
            m.d.comb += [self.tdata.eq(padded), self.tlast.eq(1), self.i.ready.eq(self.tready)]
        else:
            idx = Signal(range(n))
            last = idx == n - 1
            m.d.comb += [self.tdata.eq(padded.word_select(idx, w)), self.tlast.eq(last),
                         self.i.ready.eq(self.tready & last)]
            with m.If(self.tvalid & self.tready):
                with m.If(last):
                    m.d.sync += idx.eq(0)
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
        return m


class SkidBuffer(wiring.Component):
    """A two-entry register slice: registered ``i.ready`` and ``o.valid``/``o.payload``, one
    cycle of latency, one payload per cycle when ``o.ready`` stays high."""

    def __init__(self, payload_shape):
        self._shape = payload_shape
        super().__init__({"i": In(stream.Signature(payload_shape)),
                          "o": Out(stream.Signature(payload_shape))})

    def elaborate(self, platform):
        m = Module()
        skid = Signal(self._shape)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(~self.o.valid | self.o.ready):
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & self.i.ready):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m


class AxiTop(wiring.Component):
    """A block behind AXI4-Stream ports (see the module docstring for names, packing and the
    ``AXI_LATENCY`` schedule). Built from the block's config; the block's stream ports decide
    the AXI ports, so every block with RTL (``zeroskip.blocks``) gets one."""

    def __init__(self, cfg, max_bytes: int = DEFAULT_MAX_BYTES):
        from .gen import block_component

        self._cfg = cfg
        self._block = block_component(cfg)
        self._ports = axi_ports(cfg, max_bytes)
        members = {}
        for p in self._ports:
            for field, member in axis_signature(p.data_bits, p.direction).items():
                members[f"{p.prefix}_{field}"] = member
        self._passthrough = {}
        for name, member in self._block.signature.members.items():
            if member.is_port:
                members[name] = member
                self._passthrough[name] = member
        super().__init__(members)

    @property
    def config(self):
        return self._cfg

    @property
    def ports(self) -> list[AxiPort]:
        return list(self._ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = block = self._block
        for p in self._ports:
            bport = getattr(block, p.port)
            shape = bport.payload.shape()
            axis = {f: getattr(self, f"{p.prefix}_{f}") for f in ("tdata", "tvalid", "tready",
                                                                    "tlast")}
            if p.direction == "in":
                des = m.submodules[f"{p.prefix}_des"] = AxiStreamDeserializer(
                    shape, p.data_bits, p.beats)
                m.d.comb += [des.tdata.eq(axis["tdata"]), des.tvalid.eq(axis["tvalid"]),
                             des.tlast.eq(axis["tlast"]), axis["tready"].eq(des.tready)]
                wiring.connect(m, des.o, bport)
            else:
                skid = m.submodules[f"{p.prefix}_skid"] = SkidBuffer(shape)
                ser = m.submodules[f"{p.prefix}_ser"] = AxiStreamSerializer(
                    shape, p.data_bits, p.beats)
                wiring.connect(m, bport, skid.i)
                wiring.connect(m, skid.o, ser.i)
                m.d.comb += [axis["tdata"].eq(ser.tdata), axis["tvalid"].eq(ser.tvalid),
                             axis["tlast"].eq(ser.tlast), ser.tready.eq(axis["tready"])]
        for name, member in self._passthrough.items():
            if member.flow == In:
                m.d.comb += getattr(block, name).eq(getattr(self, name))
            else:
                m.d.comb += getattr(self, name).eq(getattr(block, name))
        return m


def axi_top_name(cfg) -> str:
    return f"zeroskip_{cfg.block}_axis"


def generate_axi(cfg, out_dir, max_bytes: int = DEFAULT_MAX_BYTES,
                 name: str | None = None) -> Path:
    """Write the AXI4-Stream top ``<name>.v`` and ``<name>.json`` (config, ports and the
    per-port packing) into ``out_dir``; returns the Verilog path. Skipped when the same
    config and width were already written there."""
    from .gen import write_top

    _check_max_bytes(max_bytes)
    name = name or axi_top_name(cfg)
    return write_top(lambda: AxiTop(cfg, max_bytes), name, out_dir,
                     {"config": json.loads(config_to_json(cfg)), "max_bytes": max_bytes},
                     extra=lambda top: {"axis": [asdict(p) for p in top.ports]})
