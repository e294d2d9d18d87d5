"""The case player: a testbench-only Verilog harness that plays ``tb.scoreboard.Case``s into a
block at full simulator speed.

``StreamBench`` (``tb.streams``) drives and samples every stream port from Python each cycle;
under Verilator that costs more than the block itself. The player does the same in Verilog,
around the block's top and through its top-level ports only: each input stream is fed from a
memory loaded at run time (``$readmemh``) under the same seeded valid pattern
(``sim.streams.Pattern``, one bit per cycle, loaded too), each output stream is given the
same seeded ready pattern and every output beat is written to a file with its cycle. Python
only writes the files, waits for ``zs_done`` and checks the result with the ``Scoreboard``.

The transfer rules are ``StreamBench``'s, cycle for cycle: cycle 0 is the first after reset;
a source that raised ``valid`` holds its beat until it is taken, otherwise it offers the next
beat when its pattern bit for the cycle is set; a sink is ready when its pattern bit is set,
and always once every output port has its expected beats, for ``LINGER_CYCLES`` more cycles
(so a beat too many is seen). Several cases can be played in one simulation, each behind its
own reset (``zs_case`` selects the files).

Files of case ``i``, in the simulation's working folder: ``zs<i>.hdr`` (one 32-bit word a
line: per input port its beat count and whether its pattern is always set, per output port
its expected beat count and the same flag, then the cycle limit), ``zs<i>_<port>.hex``
(payloads), ``zs<i>_<port>.pat`` (pattern bits, 64 a word, bit ``t % 64`` of word
``t // 64``; only for ports with a pattern); written back: ``zs<i>_<port>.out`` (``cycle
payload`` per output beat) and ``zs<i>.sum`` (the end cycle, a timeout flag, per input port
the beats taken and the cycle of the first).
"""

from __future__ import annotations

from pathlib import Path

from zeroskip.sim.streams import handshake_patterns
from tb.scoreboard import LINGER_CYCLES, Case

TOP = "zs_player"
#: smallest memory depths: most test cases share one build per block config
MIN_BEATS = 1 << 12
MIN_PATTERN_WORDS = 1 << 10


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def cycle_limit(case: Case) -> int:
    """Cycles after which a run that has not finished stops as timed out."""
    beats = sum(len(b) for b in [*case.inputs.values(), *case.outputs.values()])
    return max(2_000_000, 4 * max(case.cycles, beats))


def depths(cases: list[Case]) -> dict:
    """Memory depths (powers of two, part of the build) that hold every case of a run.
    Patterns wrap past their length: a run that long already differs from its prediction."""
    beats = {}
    for c in cases:
        for p, b in c.inputs.items():
            beats[p] = max(beats.get(p, MIN_BEATS), _pow2(len(b)))
    pattern = MIN_PATTERN_WORDS
    for c in cases:
        if c.valid_p < 1.0 or c.ready_p < 1.0:
            est = 2 * max(c.cycles, sum(len(b) for b in c.inputs.values())) + 4096
            pattern = max(pattern, _pow2(-(-est // 64)))
    return {"beats": beats, "pattern_words": pattern}


def player_verilog(block_top: str, ports: dict, inputs: list[str], outputs: list[str],
                   sizes: dict) -> str:
    """The harness around ``block_top`` (``ports``: name -> {dir, width}, as in the JSON
    beside the generated Verilog). ``inputs``/``outputs``: the stream ports it plays."""
    def width(port):
        return ports[f"{port}__payload"]["width"]

    pw = sizes["pattern_words"]
    pbits = max(1, (pw - 1).bit_length())
    n_hdr = 2 * len(inputs) + 2 * len(outputs) + 1
    decl, conns, load, reset, step, done = [], [], [], [], [], []
    for i, p in enumerate(inputs):
        w, d = width(p), sizes["beats"][p]
        abits = max(1, (d - 1).bit_length())
        decl += [f"  reg [{w - 1}:0] {p}_mem [0:{d - 1}];",
                 f"  reg [63:0] {p}_pat [0:{pw - 1}];",
                 f"  reg [31:0] {p}_n, {p}_pos, {p}_first;",
                 f"  reg {p}_always, {p}_hold;",
                 f"  wire {p}_bit = {p}_always | {p}_pat[t[{pbits + 5}:6]][t[5:0]];",
                 f"  wire {p}_valid = running & ({p}_pos < {p}_n) & ({p}_hold | {p}_bit);",
                 f"  wire {p}_ready;"]
        conns += [f"    .{p}__valid({p}_valid), .{p}__ready({p}_ready), "
                  f".{p}__payload({p}_mem[{p}_pos[{abits - 1}:0]]),"]
        load += [f"      {p}_n = hdr[{2 * i}]; {p}_always = hdr[{2 * i + 1}][0];",
                 f"      $sformat(fname, \"zs%0d_{p}.hex\", zs_case);",
                 f"      if ({p}_n > {d}) begin $display(\"zs_player: {p}: %0d beats, room "
                 f"for {d}\", {p}_n); $finish; end",
                 f"      if ({p}_n > 0) $readmemh(fname, {p}_mem, 0, {p}_n - 1);",
                 f"      $sformat(fname, \"zs%0d_{p}.pat\", zs_case);",
                 f"      if (!{p}_always) $readmemh(fname, {p}_pat);"]
        reset += [f"      {p}_pos <= 0; {p}_hold <= 0; {p}_first <= 32'hffffffff;"]
        step += [f"      if ({p}_valid & {p}_ready) begin",
                 f"        {p}_pos <= {p}_pos + 1; {p}_hold <= 0;",
                 f"        if ({p}_pos == 0) {p}_first <= t;",
                 f"      end else if ({p}_valid) {p}_hold <= 1;"]
        done += [f"        $fwrite(fd_sum, \"%0d %0d\\n\", {p}_pos + ({p}_valid & {p}_ready), "
                 f"{p}_pos == 0 && ({p}_valid & {p}_ready) ? t : {p}_first);"]
    arrived_terms = []
    for j, p in enumerate(outputs):
        h = 2 * len(inputs) + 2 * j
        w = width(p)
        decl += [f"  reg [63:0] {p}_pat [0:{pw - 1}];",
                 f"  reg [31:0] {p}_want, {p}_count;",
                 f"  reg {p}_always;",
                 f"  integer {p}_fd;",
                 f"  wire {p}_valid;",
                 f"  wire [{w - 1}:0] {p}_payload;",
                 f"  wire {p}_ready = running & (arrived | {p}_always | "
                 f"{p}_pat[t[{pbits + 5}:6]][t[5:0]]);",
                 f"  wire {p}_fire = {p}_valid & {p}_ready;"]
        conns += [f"    .{p}__valid({p}_valid), .{p}__ready({p}_ready), "
                  f".{p}__payload({p}_payload),"]
        load += [f"      {p}_want = hdr[{h}]; {p}_always = hdr[{h + 1}][0];",
                 f"      $sformat(fname, \"zs%0d_{p}.pat\", zs_case);",
                 f"      if (!{p}_always) $readmemh(fname, {p}_pat);",
                 f"      $sformat(fname, \"zs%0d_{p}.out\", zs_case);",
                 f"      {p}_fd = $fopen(fname, \"w\");"]
        reset += [f"      {p}_count <= 0;"]
        step += [f"      if ({p}_fire) begin",
                 f"        $fwrite({p}_fd, \"%0d %h\\n\", t, {p}_payload);",
                 f"        {p}_count <= {p}_count + 1;",
                 "      end"]
        done += [f"        $fclose({p}_fd);"]
        arrived_terms.append(f"({p}_count + {p}_fire >= {p}_want)")
    conns[-1] = conns[-1].rstrip(",")
    return "\n".join([
        f"// testbench-only: plays stream cases into {block_top} (tb/player.py)",
        f"module {TOP} (input clk, input rst, input zs_load, input [15:0] zs_case,",
        "                  output reg zs_done, output reg zs_timeout);",
        f"  localparam LINGER = {LINGER_CYCLES};",
        f"  reg [31:0] hdr [0:{n_hdr - 1}];",
        "  reg [31:0] t, limit, linger;",
        "  reg armed, arrived;",
        "  reg [8*64-1:0] fname;",
        "  integer fd_sum;",
        "  wire running = armed & ~rst & ~zs_done;",
        *decl,
        f"  {block_top} dut (",
        "    .clk(clk), .rst(rst),",
        *conns,
        "  );",
        "  initial begin armed = 0; zs_done = 0; zs_timeout = 0; end",
        "  always @(posedge clk) begin",
        "    if (zs_load) begin",
        "      $sformat(fname, \"zs%0d.hdr\", zs_case);",
        f"      $readmemh(fname, hdr, 0, {n_hdr - 1});",
        f"      limit = hdr[{n_hdr - 1}];",
        *load,
        "      armed <= 1; zs_done <= 0; zs_timeout <= 0;",
        "    end else if (rst) begin",
        "      t <= 0; arrived <= 0; linger <= 0;",
        *reset,
        "    end else if (running) begin",
        *step,
        f"      arrived <= {' & '.join(arrived_terms) or '1'};",
        "      if (arrived) linger <= linger + 1;",
        "      t <= t + 1;",
        "      if ((arrived && linger == LINGER - 1) || t + 1 >= limit) begin",
        "        zs_done <= 1; armed <= 0;",
        "        zs_timeout <= !(arrived && linger == LINGER - 1);",
        "        $sformat(fname, \"zs%0d.sum\", zs_case);",
        "        fd_sum = $fopen(fname, \"w\");",
        "        $fwrite(fd_sum, \"%0d %0d\\n\", t + 1, "
        "!(arrived && linger == LINGER - 1));",
        *done,
        "        $fclose(fd_sum);",
        "      end",
        "    end",
        "  end",
        "endmodule",
        ""])


def _hex_lines(values, width: int) -> str:
    digits = max(1, -(-width // 4))
    return "".join(f"{v:0{digits}x}\n" for v in values)


def _pattern_words(pattern, cycles: int) -> list[int]:
    """The pattern's first ``cycles`` bits, 64 a word."""
    import numpy as np

    pattern(cycles - 1)  # extends its bit stream to cover them
    bits = np.zeros(cycles, bool)
    bits[:] = pattern._bits[:cycles]
    words = np.packbits(bits.reshape(-1, 64), axis=1, bitorder="little")
    return [int.from_bytes(w.tobytes(), "little") for w in words]


def write_case(case: Case, index: int, folder: Path, ports: dict, sizes: dict) -> None:
    """The files of ``case`` as case ``index`` of a run in ``folder``."""
    pats = handshake_patterns(case.valid_p, case.ready_p, case.seed,
                              sources=tuple(case.inputs), sinks=tuple(case.outputs))
    cycles = 64 * sizes["pattern_words"]
    hdr = []
    for p, beats in case.inputs.items():
        hdr += [len(beats), int(case.valid_p >= 1.0)]
    for p, beats in case.outputs.items():
        hdr += [len(beats), int(case.ready_p >= 1.0)]
    hdr.append(cycle_limit(case))
    (folder / f"zs{index}.hdr").write_text(_hex_lines(hdr, 32))
    for p, beats in case.inputs.items():
        (folder / f"zs{index}_{p}.hex").write_text(
            _hex_lines(beats, ports[f"{p}__payload"]["width"]))
    for p in [*case.inputs, *case.outputs]:
        path = folder / f"zs{index}_{p}.pat"
        if pats[p].p < 1.0:
            path.write_text(_hex_lines(_pattern_words(pats[p], cycles), 64))


def read_transfers(case: Case, index: int, folder: Path) -> tuple[dict, bool]:
    """What the player recorded for case ``index``, as ``StreamBench.run`` returns it (input
    ports: one entry per beat taken, the first with its cycle), and whether it timed out."""
    lines = (folder / f"zs{index}.sum").read_text().split("\n")
    _, timeout = map(int, lines[0].split())
    transfers = {}
    for p, line in zip(case.inputs, lines[1:]):
        taken, first = map(int, line.split())
        transfers[p] = [(first, None)] + [(None, None)] * (taken - 1) if taken else []
    for p in case.outputs:
        beats = []
        for line in (folder / f"zs{index}_{p}.out").read_text().split("\n"):
            if line:
                cycle, bits = line.split()
                beats.append((int(cycle), int(bits, 16)))
        transfers[p] = beats
    return transfers, bool(timeout)
