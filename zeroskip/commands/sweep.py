"""``zeroskip sweep``: a block's configuration space, point by point, as tasks on Dask distributed.

A *point* is one configuration of a block (its preset with some fields changed). The space is a
grid (``--grid rows=4,8,16 cols=4..16``: every combination) or ``--trials N`` configurations
that Optuna's sampler picks from the same fields. Each point has *parts*, each one Dask task:

- ``sim``: the network simulated on the point, with the code ``zeroskip sim`` runs
  (``simulate_network`` of the block's simulator): cycles, energy, MAC utilisation, accuracy
  where the block changes it;
- ``verify`` (``--verify``): the block's RTL on one small layer, checked bit- and cycle-exactly
  by the verifier ``zeroskip verify`` runs; the task asks for the worker resource ``rtl``;
- ``synth`` (``--synth``): LUT4, FF, DP16KD, Fmax of the point's ECP5 synthesis, place and
  route, from the cache ``zeroskip synth`` keeps, else run with its flow; the task asks for the
  worker resource ``synth``.

Every point has its own folder ``OUT/points/BLOCK-HASH`` (the hash of its whole configuration)
with one file per part, named by the hash of what that part depends on (the source of the
network, the energy table and the simulator's code; the RTL and testbench sources; the
synthesis flow). A part's file is written whole (``zeroskip.replacing``) by the worker as soon
as the part is done, and again by this process if the worker's folder is not shared, so a
finished point is never lost: a rerun, after a crash, a killed worker or an interrupt, reads
what is there and computes only what is missing. ``sweep.csv`` / ``sweep.json`` (one row per
point) and the Pareto plots are written at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

from zeroskip import replacing, write_atomic

MAX_GRID_POINTS = 10_000
SAMPLERS = ("tpe", "nsga2", "random")
# objective -> (row column, direction): what --trials optimises
OBJECTIVES = {"cycles": ("cycles", "minimize"), "energy": ("energy_pj", "minimize"),
              "luts": ("luts", "minimize"), "accuracy": ("accuracy", "maximize"),
              "throughput": ("images_per_s", "maximize")}
PARTS = ("sim", "verify", "synth")
RESOURCES = {"sim": None, "verify": {"rtl": 1}, "synth": {"synth": 1}}


class SweepError(ValueError):
    """Bad input to the sweep: one line saying what and how to fix it."""


# --- the space ------------------------------------------------------------------------------

def config_fields(block: str) -> dict:
    """The fields a sweep can set: the block config's own (``fxp`` aside) and the fixed-point
    contract's, by name, each as its ``dataclasses.Field``."""
    from zeroskip import blocks as registry
    from zeroskip.hw import config as hwcfg

    rec = registry.get_block(block)
    fields = {f.name: f for f in dataclasses.fields(rec.config) if f.name != "fxp"}
    fields.update({f.name: f for f in dataclasses.fields(hwcfg.FixedPointConfig)})
    return fields


def _field_kind(f) -> str:
    return {int: "int", "int": "int", float: "float", "float": "float", bool: "bool",
            "bool": "bool", "int | None": "int|None"}.get(f.type, "str")


def _range_text(f) -> str:
    """What a field takes, for error messages."""
    b = f.metadata.get("bounds")
    if b is not None:
        rng = f"{b.lo}..{b.hi}" if b.hi is not None else f">= {b.lo}"
        return f"an integer in {rng}{', a power of two' if b.power_of_two else ''}"
    return f.metadata.get("help") or _field_kind(f)


def _parse_value(name: str, f, text: str):
    kind = _field_kind(f)
    try:
        if kind == "bool":
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text.lower() in ("1", "true", "yes")
        if kind == "int|None" and text.lower() == "none":
            return None
        if kind in ("int", "int|None"):
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise SweepError(f"--grid {name}: {text!r} is not a value of {name} "
                         f"({_range_text(f)})") from None
    return text


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept field: listed ``values``, or the range ``lo..hi`` (``values`` None)."""

    name: str
    values: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    kind: str = "int"
    power_of_two: bool = False

    def grid_values(self) -> tuple:
        if self.values is not None:
            return self.values
        if self.kind == "float":
            raise SweepError(f"--grid {self.name}={self.lo}..{self.hi}: a range of a number "
                             "field has no grid; list the values (e.g. 0.25,0.5) or use "
                             "--trials N")
        lo, hi = int(self.lo), int(self.hi)
        if self.power_of_two:
            return tuple(1 << e for e in range(lo.bit_length() - 1, hi.bit_length())
                         if lo <= 1 << e <= hi)
        return tuple(range(lo, hi + 1))


def parse_axis(block: str, text: str) -> Axis:
    """``FIELD=V1,V2,...`` or ``FIELD=LO..HI``, checked against the field's type and range
    (``SweepError`` naming the field and what it takes)."""
    fields = config_fields(block)
    name, sep, vals = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not vals.strip():
        raise SweepError(f"--grid takes FIELD=V1,V2,... or FIELD=LO..HI (e.g. rows=4,8,16), "
                         f"not {text!r}")
    if name not in fields:
        raise SweepError(f"--grid {name}: {block} has no field {name!r}; its fields: "
                         f"{', '.join(fields)}")
    f = fields[name]
    bounds = f.metadata.get("bounds")
    kind = _field_kind(f)
    if ".." in vals:
        lo_t, _, hi_t = vals.partition("..")
        if kind not in ("int", "float"):
            raise SweepError(f"--grid {text}: {name} is not a number field; list its values")
        lo, hi = _parse_value(name, f, lo_t.strip()), _parse_value(name, f, hi_t.strip())
        if lo > hi:
            raise SweepError(f"--grid {text}: the range is empty ({lo} > {hi}); give LO..HI")
        for v in (lo, hi):  # the ends in range; a power-of-two field takes those between
            _check_field_value(name, f, v, power_of_two=False)
        axis = Axis(name, None, lo, hi, kind, bool(bounds and bounds.power_of_two))
        if not axis.power_of_two or axis.kind == "float" or axis.grid_values():
            return axis
        raise SweepError(f"--grid {text}: no power of two in {lo}..{hi} ({name} takes "
                         f"{_range_text(f)})")
    values = []
    for t in vals.split(","):
        if not t.strip():
            raise SweepError(f"--grid {text}: an empty value; give FIELD=V1,V2,...")
        v = _parse_value(name, f, t.strip())
        _check_field_value(name, f, v)
        if v not in values:
            values.append(v)
    return Axis(name, tuple(values), kind=kind)


def _check_field_value(name: str, f, value, power_of_two: bool = True) -> None:
    """The field's own range (``hw.config.Bounds``); rules across fields are the point's."""
    bounds = f.metadata.get("bounds")
    if bounds is None:
        return
    if not power_of_two:
        bounds = dataclasses.replace(bounds, power_of_two=False)
    try:
        bounds.check(name, value)
    except ValueError as e:
        raise SweepError(f"--grid {name}={value}: {e}") from None


def config_with(base, overrides: dict):
    """``base`` with ``overrides`` (block and fixed-point fields by name), validated as
    ``zeroskip sim`` validates its options (``ValueError`` naming the rule broken)."""
    fxp_names = {f.name for f in dataclasses.fields(base.fxp)}
    fxp_over = {k: v for k, v in overrides.items() if k in fxp_names}
    if "acc_bits" in fxp_over and "bias_bits" not in fxp_over:
        fxp_over["bias_bits"] = None  # follows the accumulator width, as on the command line
    fxp = dataclasses.replace(base.fxp, **fxp_over) if fxp_over else base.fxp
    return dataclasses.replace(base, fxp=fxp, **{k: v for k, v in overrides.items()
                                                  if k not in fxp_names})


def grid_points(axes: list[Axis]) -> list[dict]:
    """Every combination of the axes' values, in order (the last axis fastest)."""
    values = [a.grid_values() for a in axes]
    n = 1
    for v in values:
        n *= len(v)
    if n > MAX_GRID_POINTS:
        raise SweepError(f"the grid has {n:,} points (more than {MAX_GRID_POINTS:,}); list "
                         "fewer values or sample it with --trials N")
    return [dict(zip((a.name for a in axes), combo)) for combo in itertools.product(*values)]


def config_hash(cfg) -> str:
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:12]


# --- what a part's result depends on --------------------------------------------------------

def _hash_files(paths, h=None):
    h = h or hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h


@functools.lru_cache(maxsize=None)
def sim_code_version() -> str:
    """A hash of the code a simulated figure comes from: the simulators (``zeroskip.sim``), the
    networks and the quantisation (``zeroskip.models``) and the configs (``hw/config.py``)."""
    from zeroskip import __version__, models, sim
    from zeroskip.hw import config

    h = hashlib.sha256(__version__.encode())
    for pkg in (sim, models):
        _hash_files(Path(pkg.__file__).parent.glob("*.py"), h)
    return _hash_files([Path(config.__file__)], h).hexdigest()[:16]


def _path_digest(path: str) -> str:
    """A file's content hash; for a folder, its files' names, sizes and times."""
    p = Path(path)
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    if p.is_dir():
        items = sorted((str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns)
                       for q in p.rglob("*") if q.is_file())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()
    return path  # module:function, or a zoo name


def source_spec(args) -> dict:
    """The workload of ``--network`` / ``--model`` / ``--topology`` as the workers load it
    (paths made absolute), checked as ``zeroskip sim`` checks it."""
    from zeroskip import cli
    from zeroskip.models.workloads import NETWORKS

    given = [o for o in ("network", "model", "topology") if getattr(args, o, None)]
    if given in ([], ["network"]) and args.images is None and not any(
            getattr(args, o, None) for o in cli.MODEL_OPTIONS):
        # what check_source_args checks here, without loading the digits net's module
        network = args.network or "digits"
        if network not in NETWORKS:
            raise SweepError(f"unknown network {network!r}; choose one of: "
                             f"{', '.join(NETWORKS)}")
        return {"kind": "network", "network": network,
                "images": cli.DEFAULT_IMAGES if network == "digits" else None}
    kind = cli.check_source_args(args)
    if kind == "network":
        network = args.network or "digits"
        return {"kind": kind, "network": network,
                "images": cli.check_workload_args(network, args.images)
                if network == "digits" else None}
    if kind == "topology":
        path = Path(args.topology)
        if not path.is_file():
            raise SweepError(f"--topology {args.topology!r} does not exist; give a SCALE-Sim "
                             "topology .csv file")
        return {"kind": kind, "topology": str(path.resolve())}
    from zeroskip.models.workloads import ZOO_MODELS

    if not (Path(args.model).exists() or ":" in args.model or args.model in ZOO_MODELS):
        raise SweepError(f"--model {args.model!r} is not a file, a module:function or one of "
                         f"{', '.join(ZOO_MODELS)}")
    for o in ("weights", "calib"):
        v = getattr(args, o, None)
        if v and not Path(v).exists():
            raise SweepError(f"--{o} {v!r} does not exist")
    spec = {"kind": kind, "images": args.images or 1}
    for o in ("model", "weights", "calib"):
        v = getattr(args, o, None)
        spec[o] = str(Path(v).resolve()) if v and Path(v).exists() else v
    for o in ("input_size", "mean", "std"):
        spec[o] = getattr(args, o, None)
    return spec


def source_digest(spec: dict) -> dict:
    """What of the source a result depends on: the spec, and the contents of its files."""
    d = dict(spec)
    for o in ("topology", "model", "weights", "calib"):
        if d.get(o):
            d[o + "_digest"] = _path_digest(d[o])
    return d


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the tasks (run on the workers) ---------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _workload(spec_json: str):
    """The workload, loaded once per worker process (what ``zeroskip sim`` loads)."""
    spec = json.loads(spec_json)
    if spec["kind"] == "network":
        from zeroskip.sim import workload

        return workload.load(spec["network"], images=spec["images"] or 8)
    if spec["kind"] == "topology":
        from zeroskip.models import topology

        return topology.load_workload(spec["topology"])
    from zeroskip.models import importer

    return importer.load_workload(spec["model"], spec["weights"], spec["calib"],
                                  spec["input_size"], spec["mean"], spec["std"],
                                  images=spec["images"])


def _store(path: str, result: dict, config: dict) -> None:
    """Keep a part's result in its point's folder (written whole), with the point's
    configuration beside it. A worker whose file system does not have the folder leaves it to
    the process that started the sweep."""
    try:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if not (p.parent / "config.json").exists():
            write_atomic(p.parent / "config.json", json.dumps(config, sort_keys=True))
        write_atomic(p, json.dumps(result, indent=1, allow_nan=False))
    except OSError:
        pass


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _error(e: BaseException) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first}"


def sim_task(task: dict) -> dict:
    """Simulate the point's configuration on the workload (``simulate_network``, as
    ``zeroskip sim`` does); the result is written to ``task["path"]`` and returned."""
    from zeroskip import blocks as registry
    from zeroskip.hw.config import config_from_dict

    t0 = time.perf_counter()
    try:
        cfg = config_from_dict(task["config"])
        wl = _workload(json.dumps(task["source"], sort_keys=True))
        mod = registry.get_block(cfg.block, "simulator").part("simulator")
        report = mod.simulate_network(wl, cfg, task["table"])
    except ValueError as e:  # the configuration cannot run this network: a result too
        result = {"part": "sim", "status": "error", "error": _error(e), "cacheable": True}
    except Exception as e:  # noqa: BLE001 - reported in the point's row, not kept
        result = {"part": "sim", "status": "error", "error": _error(e), "cacheable": False}
    else:
        t = report.totals()
        result = {"part": "sim", "status": "ok", "cycles": int(t["cycles"]),
                  "energy_pj": t["energy_pj"],
                  **{f"energy_{k}_pj": v for k, v in t["energy_breakdown_pj"].items()},
                  "utilization": t["utilization"], "macs_dense": int(t["macs_dense"]),
                  "macs_performed": int(t["macs_performed"]), "mac_units": int(t["mac_units"]),
                  "accuracy": report.accuracy, "images": wl.batch, "network": wl.name,
                  "notes": list(report.notes),
                  "layers": [{"name": l.name, "cycles": int(l.cycles),
                              "energy_pj": l.energy_pj, "utilization": l.utilization}
                             for l in report.layers], "cacheable": True}
    result.update(seconds=round(time.perf_counter() - t0, 3), worker=_worker_name())
    if result["cacheable"]:
        _store(task["path"], result, task["config"])
    return result


def verify_task(task: dict) -> dict:
    """Run the block's RTL on one layer of the digits net (``zeroskip verify``'s verifier)."""
    import shutil

    from zeroskip.hw.config import config_from_dict

    t0 = time.perf_counter()
    build = Path(task["path"]).with_suffix(".build")
    try:
        from zeroskip import cli

        cfg = config_from_dict(task["config"])
        check = cli._checkout_part(cfg.block, "verifier")
        from tb.runner import check_icarus

        check_icarus()
        wl = _workload(json.dumps({"kind": "network", "network": "digits",
                                   "images": task["image"] + 1}, sort_keys=True))
        i = [l.name for l in wl.layers].index(task["layer"])
        q = wl.quant[i]
        cfg.fxp.check_reduction(task["layer"], q.spec.gemm[1], int(q.bias.abs().max()))
        res = check(cfg, q, wl.real_inputs[i][task["image"]], build)
    except AssertionError as e:  # the RTL disagrees: a result, kept with its build
        result = {"part": "verify", "status": "ok", "verified": "FAILED", "error": _error(e),
                  "cacheable": True, "build": str(build)}
    except ValueError as e:
        result = {"part": "verify", "status": "error", "error": _error(e), "cacheable": True}
    except Exception as e:  # noqa: BLE001 - e.g. no simulator on this worker: not kept
        result = {"part": "verify", "status": "error", "error": _error(e), "cacheable": False}
    else:
        result = {"part": "verify", "status": "ok", "verified": "pass",
                  "verify_cycles": int(res["cycles"]), "verify_outputs": int(res["outputs"]),
                  "cacheable": True}
        shutil.rmtree(build, ignore_errors=True)  # a pass leaves nothing worth keeping
    result.update(layer=task["layer"], seconds=round(time.perf_counter() - t0, 3),
                  worker=_worker_name())
    if result["cacheable"]:
        _store(task["path"], result, task["config"])
    return result


def synth_task(task: dict) -> dict:
    """ECP5 synthesis and place and route of the point's AXI4-Stream top (``zeroskip synth``'s
    flow; its cache first)."""
    from zeroskip.commands import fpga
    from zeroskip.hw.config import config_from_dict

    t0 = time.perf_counter()
    try:
        cfg = config_from_dict(task["config"])
        res = fpga.cached_synth(cfg, fpga.AREA_TARGET)
        if res is None:
            res = fpga.synth(cfg, fpga.AREA_TARGET,
                             work_dir=Path(task["path"]).with_suffix(".work"))
    except Exception as e:  # noqa: BLE001 - a missing tool or a failed run: not kept
        result = {"part": "synth", "status": "error", "error": _error(e), "cacheable": False}
    else:
        result = {"part": "synth", "status": "ok", "cacheable": not res.get("pnr_error"),
                  **{k: res.get(k) for k in ("luts", "ffs", "dsps", "brams", "fmax_mhz")}}
    result.update(seconds=round(time.perf_counter() - t0, 3), worker=_worker_name())
    if result["cacheable"]:
        _store(task["path"], result, task["config"])
    return result


TASKS = {"sim": sim_task, "verify": verify_task, "synth": synth_task}


# --- the run --------------------------------------------------------------------------------

@dataclasses.dataclass
class Point:
    overrides: dict
    cfg: object = None
    invalid: str | None = None
    parts: dict = dataclasses.field(default_factory=dict)  # part -> task dict
    results: dict = dataclasses.field(default_factory=dict)  # part -> result dict
    cached: set = dataclasses.field(default_factory=set)

    @property
    def key(self) -> str:
        return f"{self.cfg.block}-{config_hash(self.cfg)}" if self.cfg else "invalid"

    @property
    def done(self) -> bool:
        return self.invalid is not None or set(self.results) == set(self.parts)


class Sweep:
    """The points of a sweep, their parts' files and the tasks still to run."""

    def __init__(self, block: str, base, out: Path, source: dict, table, table_digest: str,
                 verify: dict | None = None, synth: bool = False):
        self.block, self.base, self.out = block, base, out
        self.source, self.table = source, table
        self.sim_key = _digest({"source": source_digest(source), "table": table_digest,
                                "code": sim_code_version()})
        self.verify, self.synth = verify, synth
        self.points: dict[str, Point] = {}  # by key, in the order they were first asked for
        self.computed = 0

    def point(self, overrides: dict) -> Point:
        """The point of ``overrides`` (the same configuration twice is one point), with its
        parts' tasks and whatever results its folder already has."""
        try:
            cfg = config_with(self.base, overrides)
        except ValueError as e:
            p = Point(dict(overrides), invalid=str(e).splitlines()[0])
            self.points[f"invalid-{len(self.points)}"] = p
            return p
        key = f"{cfg.block}-{config_hash(cfg)}"
        if key in self.points:
            return self.points[key]
        p = Point(dict(overrides), cfg)
        folder = (self.out / "points" / key).resolve()
        cfg_dict = cfg.to_dict()
        p.parts["sim"] = {"part": "sim", "config": cfg_dict, "source": self.source,
                          "table": self.table, "path": str(folder / f"sim-{self.sim_key}.json")}
        if self.verify:
            from zeroskip.commands import fpga

            vkey = _digest({"layer": self.verify["layer"], "image": self.verify["image"],
                            "rtl": fpga.rtl_source_hash(cfg), "tb": _tb_version(),
                            "code": sim_code_version()})
            p.parts["verify"] = {"part": "verify", "config": cfg_dict, **self.verify,
                                 "path": str(folder / f"verify-{vkey}.json")}
        if self.synth:
            from zeroskip.commands import fpga

            skey = fpga.cache_key(cfg, fpga.AREA_TARGET)
            p.parts["synth"] = {"part": "synth", "config": cfg_dict,
                                "path": str(folder / f"synth-{skey}.json")}
        for part, task in p.parts.items():
            res = _read(task["path"])
            if res is None and part == "synth":  # the synthesis cache ``zeroskip synth`` keeps
                res = _synth_from_cache(skey)
            if res is not None:
                p.results[part] = res
                p.cached.add(part)
        self.points[key] = p
        return p

    def missing(self, p: Point) -> list[str]:
        return [part for part in p.parts if part not in p.results]

    def record(self, p: Point, part: str, result: dict) -> None:
        """A part finished: keep its file (if the worker's folder is elsewhere) and result."""
        path = Path(p.parts[part]["path"])
        if self.computed == 0:  # the sweep's summary, if any, is out of date from here
            (self.out / "sweep.json").unlink(missing_ok=True)
        if result.get("cacheable") and not path.exists():
            _store(str(path), result, p.parts[part]["config"])
        p.results[part] = result
        self.computed += 1


@functools.lru_cache(maxsize=None)
def _tb_version() -> str:
    root = Path(__file__).resolve().parents[2] / "tb"
    return _hash_files(root.glob("*.py")).hexdigest()[:16] if root.is_dir() else "none"


def _read(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _synth_from_cache(key: str) -> dict | None:
    """A result of ``zeroskip synth`` (or ``run --synth``) for the same config and flow."""
    from zeroskip.commands import fpga

    res = _read(str(fpga._cache_path(key)))
    if res is None or res.get("pnr_error"):
        return None
    return {"part": "synth", "status": "ok", "cacheable": True, "from": "synthesis cache",
            **{k: res.get(k) for k in ("luts", "ffs", "dsps", "brams", "fmax_mhz")}}


class Cluster:
    """The Dask client, connected on first use: to ``scheduler``, else to a LocalCluster of
    ``workers`` single-threaded worker processes (default: one per core), each offering one
    ``synth`` and one ``rtl`` resource."""

    def __init__(self, scheduler: str | None, workers: int | None):
        self.scheduler, self.workers = scheduler, workers
        self.client = self.cluster = None

    def get(self):
        if self.client is None:
            import logging

            from distributed import Client, LocalCluster

            if self.scheduler:
                try:
                    self.client = Client(self.scheduler, timeout="15s")
                except (OSError, TimeoutError) as e:
                    raise SweepError(f"--scheduler {self.scheduler}: cannot connect "
                                     f"({_error(e)}); is a scheduler running there?") from None
            else:
                self.cluster = LocalCluster(
                    n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1,
                    processes=True, resources={"synth": 1, "rtl": 1},
                    dashboard_address=":0", silence_logs=logging.CRITICAL)
                self.client = Client(self.cluster)
        return self.client

    def where(self) -> str:
        if self.scheduler:
            return f"the scheduler at {self.scheduler}"
        return f"a local cluster of {self.workers or os.cpu_count()} worker process(es)"

    def check_resources(self, needed: set[str]) -> None:
        """Tasks that ask for a resource no connected worker has would wait for ever."""
        if not needed or not self.scheduler:
            return
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        if not workers:
            print(f"note: no worker is connected to {self.scheduler} yet; the tasks wait "
                  "for one", file=sys.stderr)
            return
        for r in sorted(needed):
            if not any(w.get("resources", {}).get(r) for w in workers):
                raise SweepError(f"no worker of {self.scheduler} offers the resource {r!r} "
                                 f"that --{'verify' if r == 'rtl' else 'synth'} tasks ask "
                                 f"for; start one with 'dask worker {self.scheduler} "
                                 f"--nthreads 1 --resources {r}=1'")

    def close(self):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


ATTEMPTS = 3  # submissions of a part whose result was lost with its worker


def _submit(client, p: Point, part: str, attempt: int = 0):
    task = p.parts[part]
    key = f"{part}-{p.key}-{Path(task['path']).stem}" + (f"-retry{attempt}" if attempt else "")
    return client.submit(TASKS[part], task, key=key, resources=RESOURCES[part], pure=False)


def run_grid(sweep: Sweep, points: list[Point], cluster: Cluster, progress) -> None:
    """Run every missing part of ``points``, recording each as it completes. A part whose
    result cannot be fetched (its worker died after finishing it, before handing it over) is
    read from the file the worker wrote, else submitted again, up to ``ATTEMPTS`` times."""
    todo = [p for p in points if not p.done]
    if not todo:
        return
    from distributed import as_completed

    client = cluster.get()
    cluster.check_resources({r for p in todo for part in sweep.missing(p)
                             for r in (RESOURCES[part] or {})})
    futures = {_submit(client, p, part): (p, part, 0) for p in todo for part in sweep.missing(p)}
    pending = as_completed(list(futures))
    for fut in pending:
        p, part, attempt = futures.pop(fut)
        try:
            result = fut.result()
        except Exception as e:  # noqa: BLE001 - e.g. KilledWorker, or a result lost with it
            result = _read(p.parts[part]["path"])
            if result is None and attempt + 1 < ATTEMPTS:
                again = _submit(client, p, part, attempt + 1)
                futures[again] = (p, part, attempt + 1)
                pending.add(again)
                continue
            if result is None:
                result = {"part": part, "status": "error", "error": f"task lost: {_error(e)}",
                          "cacheable": False}
        sweep.record(p, part, result)
        if p.done:
            progress(p)


def run_trials(sweep: Sweep, axes: list[Axis], n_trials: int, sampler: str, seed: int,
               objectives: list[str], batch: int, cluster: Cluster, progress) -> list[Point]:
    """``n_trials`` configurations picked by an Optuna sampler over ``axes``, ``batch`` at a
    time: a batch runs in parallel and its points' objectives are told in the order they were
    asked once the whole batch is done, so the same seed and batch size pick the same points
    again (and a rerun finds them all in the cache)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # constant_liar: spread a batch's points apart
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        chosen = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
                  "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
                  "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[sampler]()
    study = optuna.create_study(directions=[OBJECTIVES[o][1] for o in objectives],
                                sampler=chosen)
    order: list[Point] = []
    asked = 0
    while asked < n_trials:
        trials = []
        for _ in range(min(batch, n_trials - asked)):
            trial = study.ask()
            p = sweep.point({a.name: _suggest(trial, a) for a in axes})
            trials.append((trial, p))
            if p not in order:
                order.append(p)
            asked += 1
        run_grid(sweep, list({id(p): p for _, p in trials}.values()), cluster,
                 lambda p: None)
        for trial, p in trials:
            row = point_row(sweep, p)
            values = [row.get(OBJECTIVES[o][0]) for o in objectives]
            if row["status"] != "ok" or any(v is None for v in values):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, values)
            progress(p)
    return order


def _suggest(trial, a: Axis):
    if a.values is not None:
        return trial.suggest_categorical(a.name, list(a.values))
    if a.kind == "float":
        return trial.suggest_float(a.name, a.lo, a.hi)
    if a.power_of_two:
        exps = [v.bit_length() - 1 for v in a.grid_values()]
        return 1 << trial.suggest_int(f"log2_{a.name}", exps[0], exps[-1])
    return trial.suggest_int(a.name, int(a.lo), int(a.hi))


# --- the output -----------------------------------------------------------------------------

RESULT_COLUMNS = ["cycles", "energy_pj", "energy_compute_pj", "energy_buffers_pj",
                  "energy_dram_pj", "utilization", "accuracy", "mac_units", "images", "luts",
                  "ffs", "dsps", "brams", "fmax_mhz", "images_per_s",
                  "images_per_s_per_1k_lut4", "verified", "verify_layer", "verify_cycles",
                  "pareto_cycles_energy", "pareto_throughput_luts"]


def point_row(sweep: Sweep, p: Point) -> dict:
    """One row: the point's whole configuration, its figures and its status."""
    fields = list(config_fields(sweep.block))
    if p.cfg is None:
        cfg = {**{f: None for f in fields}, **p.overrides}
        return {"point": "", "status": "invalid", **cfg, **{c: None for c in RESULT_COLUMNS},
                "error": p.invalid}
    d = p.cfg.to_dict()
    cfg = {f: d["fxp"][f] if f in d["fxp"] else d[f] for f in fields}
    row = {"point": p.key, "status": "ok", **cfg, **{c: None for c in RESULT_COLUMNS},
           "error": None}
    errors = []
    for part in PARTS:
        res = p.results.get(part)
        if res is None:
            if part in p.parts:
                errors.append(f"{part}: not run")
            continue
        if res.get("status") != "ok":
            errors.append(f"{part}: {res.get('error')}")
            continue
        if part == "verify":
            row.update(verified=res["verified"], verify_layer=res["layer"],
                       verify_cycles=res.get("verify_cycles"))
            if res["verified"] != "pass":
                errors.append(f"verify: {res.get('error')}")
        else:
            row.update({k: res[k] for k in RESULT_COLUMNS if k in res})
    if row["fmax_mhz"] and row["cycles"]:
        row["images_per_s"] = row["fmax_mhz"] * 1e6 * row["images"] / row["cycles"]
        row["images_per_s_per_1k_lut4"] = row["images_per_s"] / (row["luts"] / 1000)
    if errors:
        row["status"] = "error" if any(not e.startswith("verify: ") for e in errors) or \
            row["verified"] is None else "verify failed"
        row["error"] = "; ".join(errors)
    return row


def pareto_front(values: list[tuple]) -> list[bool]:
    """Which of ``values`` (tuples to minimise) no other one dominates (at least as good in
    every figure and better in one)."""
    front = []
    for i, v in enumerate(values):
        front.append(not any(all(a <= b for a, b in zip(w, v)) and w != v
                             for j, w in enumerate(values) if j != i))
    return front


def mark_pareto(rows: list[dict]) -> None:
    ok = [r for r in rows if r["status"] == "ok" and r["cycles"] is not None]
    for r, f in zip(ok, pareto_front([(r["cycles"], r["energy_pj"]) for r in ok])):
        r["pareto_cycles_energy"] = f
    area = [r for r in ok if r["luts"] and r["images_per_s"]]
    for r, f in zip(area, pareto_front([(r["luts"], -r["images_per_s"]) for r in area])):
        r["pareto_throughput_luts"] = f


def write_csv(rows: list[dict], path: Path) -> None:
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})


def point_label(row: dict, axes: list[str]) -> str:
    if len(axes) == 2 and {"rows", "cols"} == set(axes):
        return f"{row['rows']}x{row['cols']}"
    return " ".join(f"{a}={row[a]}" for a in axes)


def plot(rows: list[dict], axes: list[str], out: Path, title: str) -> list[Path]:
    """Cycles vs energy, and throughput vs LUT4 where synthesis figures exist, every point
    with its swept values, the Pareto frontier marked; PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zeroskip.sim.compare import PALETTE, save_figure

    paths = []
    views = [("cycles", "energy_pj", "pareto_cycles_energy", "cycles (lower is better)",
              "energy µJ (lower is better)", 1, 1e-6, "pareto_cycles_energy", "cycles vs energy"),
             ("luts", "images_per_s", "pareto_throughput_luts", "LUT4 (ECP5, lower is better)",
              "images/s at Fmax (higher is better)", 1, 1, "pareto_throughput_luts",
              "throughput vs LUT4")]
    for xk, yk, fk, xl, yl, xs, ys, stem, what in views:
        pts = [r for r in rows if r["status"] == "ok" and r[xk] is not None and
               r[yk] is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        xs_ = [r[xk] * xs for r in pts]
        ys_ = [r[yk] * ys for r in pts]
        front = sorted((r[xk] * xs, r[yk] * ys) for r in pts if r[fk])
        ax.scatter(xs_, ys_, s=18, color="#999999", label="design point", zorder=2)
        if front:
            fx, fy = zip(*front)
            # the edge of what the frontier's points dominate, in both views
            ax.plot(fx, fy, color=PALETTE[5], lw=1.2, drawstyle="steps-post", zorder=1)
            ax.scatter(fx, fy, s=42, color=PALETTE[5], label=f"Pareto frontier ({len(front)})",
                       zorder=3)
        label_all = len(pts) <= 12  # beyond that the labels hide each other: the frontier's
        for r, x, y in zip(pts, xs_, ys_):
            if label_all or r[fk]:
                ax.annotate(point_label(r, axes), (x, y), xytext=(3, 3),
                            textcoords="offset points", fontsize=7)
        for setter, vals in ((ax.set_xscale, xs_), (ax.set_yscale, ys_)):
            if min(vals) > 0 and max(vals) / min(vals) > 20:
                setter("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        images = pts[0]["images"]
        ax.set_title(f"{title}: {what}\n{len(pts)} points, {images} image(s) per point",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.extend(save_figure(fig, out, f"pareto_{stem.split('_', 1)[1]}"))
    return paths


# --- the command ----------------------------------------------------------------------------

def add_parser(sub) -> None:
    from zeroskip.cli import add_block_subcommand, add_energy_option, add_network_options

    def options(s):
        s.add_argument("--grid", action="extend", nargs="+", default=[],
                       metavar="FIELD=VALUES",
                       help="a config field and its values, V1,V2,... or LO..HI (powers of "
                            "two only where the field must be one); several fields: every "
                            "combination, or with --trials the space to sample")
        s.add_argument("--trials", type=int, metavar="N",
                       help="N configurations picked by an Optuna sampler from the --grid "
                            "space instead of every combination")
        s.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                       help="--trials: Optuna's sampler (default tpe)")
        s.add_argument("--objectives", default="cycles,energy", metavar="A,B",
                       help=f"--trials: what the sampler optimises, of "
                            f"{', '.join(OBJECTIVES)} (default cycles,energy)")
        s.add_argument("--seed", type=int, default=0, help="--trials: sampler seed (default 0)")
        s.add_argument("--batch", type=int, default=8, metavar="N",
                       help="--trials: points run in parallel before the sampler is told "
                            "their figures (default 8); the same seed and batch pick the same "
                            "points")
        add_network_options(s)
        add_energy_option(s)
        s.add_argument("--verify", action="store_true",
                       help="also run each point's RTL (Icarus + cocotb) on one digits layer "
                            "and check it bit- and cycle-exactly (worker resource 'rtl')")
        s.add_argument("--verify-layer", default="fc2", metavar="NAME",
                       help="--verify: the digits layer (default fc2, the smallest)")
        s.add_argument("--synth", action="store_true",
                       help="LUT4, FF, DP16KD and Fmax of each point (ECP5, AXI4-Stream top): "
                            "from the synthesis cache, synthesising (Yosys + nextpnr) the "
                            "points not in it (minutes each; worker resource 'synth')")
        s.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run the points on this Dask scheduler's workers (default: a "
                            "local cluster started for the sweep)")
        s.add_argument("--workers", type=int, metavar="N",
                       help="local cluster: worker processes (default: one per core)")
        s.add_argument("-o", "--out", default="zeroskip-sweep", metavar="DIR",
                       help="output folder: sweep.csv, sweep.json, the plots and points/, "
                            "the per-point results a rerun reuses (default: zeroskip-sweep)")
    add_block_subcommand(sub, "sweep", "simulate (and verify, synthesise) a block over a grid "
                         "or a sampled space of its config fields, as Dask tasks", "simulator",
                         options, cmd_sweep)


def check_args(args):
    """Everything about the command line that can be wrong, before anything runs or is
    written: the axes, the base configuration, the source, the options."""
    from zeroskip import cli

    if not args.grid:
        raise SweepError("give the fields to sweep: --grid FIELD=V1,V2,... (e.g. --grid "
                         "rows=4,8,16 cols=4,8,16)")
    axes = [parse_axis(args.block, t) for t in args.grid]
    names = [a.name for a in axes]
    for a in axes:
        if names.count(a.name) > 1:
            raise SweepError(f"--grid {a.name} is given twice; give each field once")
        if getattr(args, a.name, None) is not None:
            raise SweepError(f"{cli._flag(a.name)} and --grid {a.name}=...: give one (the "
                             "grid's values are the point's)")
    base = cli.config_from_args(args.block, args)
    if args.trials is not None:
        if args.trials < 1:
            raise SweepError(f"--trials must be at least 1, not {args.trials}")
        if args.batch < 1:
            raise SweepError(f"--batch must be at least 1, not {args.batch}")
    else:
        for o, default in (("sampler", "tpe"), ("seed", 0), ("objectives", "cycles,energy"),
                           ("batch", 8)):
            if getattr(args, o) != default:
                raise SweepError(f"--{o} applies to --trials only; add --trials N or leave "
                                 "it out")
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    for o in objectives:
        if o not in OBJECTIVES:
            raise SweepError(f"--objectives: unknown objective {o!r}; choose from "
                             f"{', '.join(OBJECTIVES)}")
    if not objectives or len(set(objectives)) != len(objectives):
        raise SweepError(f"--objectives takes distinct names of {', '.join(OBJECTIVES)}, not "
                         f"{args.objectives!r}")
    if args.scheduler and "://" not in args.scheduler:
        raise SweepError(f"--scheduler takes a scheduler address like tcp://HOST:PORT, not "
                         f"{args.scheduler!r}")
    if args.scheduler and args.workers is not None:
        raise SweepError("--workers sizes the local cluster; with --scheduler the cluster "
                         "has its own workers: leave it out")
    if args.workers is not None and args.workers < 1:
        raise SweepError(f"--workers must be at least 1, not {args.workers}")
    verify = None
    if args.verify:
        from zeroskip.models.workloads import network_layers

        cli._checkout_part(args.block, "verifier")  # the testbenches are there
        layers = [l.name for l in network_layers("digits")]
        if args.verify_layer not in layers:
            raise SweepError(f"--verify-layer {args.verify_layer!r}: the digits net has "
                             f"{', '.join(layers)}")
        verify = {"layer": args.verify_layer, "image": 0}
    elif args.verify_layer != "fc2":
        raise SweepError("--verify-layer applies to --verify only; add --verify or leave it out")
    if args.trials is not None and {"luts", "throughput"} & set(objectives) and not args.synth:
        raise SweepError("--objectives luts and throughput need synthesis figures: add --synth")
    return axes, base, objectives, verify


def cmd_sweep(args) -> None:
    from zeroskip import cli
    from zeroskip.sim.energy import load_table

    try:
        axes, base, objectives, verify = check_args(args)
        out = cli.check_out_dir(args.out)
        source = source_spec(args)
        table = load_table(args.energy_table)
        table_digest = _path_digest(args.energy_table) if args.energy_table else "default"
        sweep = Sweep(args.block, base, out, source, table, table_digest, verify, args.synth)
        points = None
        if args.trials is None:
            overrides = grid_points(axes)
            points = [sweep.point(o) for o in overrides]
            if all(p.invalid for p in points):
                raise SweepError(f"no point of the grid is a valid {args.block} "
                                 f"configuration: {points[0].invalid}")
    except SweepError as e:
        raise cli.CliError(str(e)) from None
    what = f"{args.block} on {_source_name(source)}"
    earlier = _read(str(out / "sweep.json")) or {}
    cluster = Cluster(args.scheduler, args.workers)
    t0 = time.perf_counter()
    done = []
    with cli._progress() as prog:
        total = len(points) if points is not None else args.trials
        task = prog.add_task(f"sweep {what}", total=total)

        def progress(p):
            done.append(p)
            prog.update(task, completed=len(done), description=f"sweep {what}: "
                        f"{' '.join(f'{k}={v}' for k, v in p.overrides.items())}")
        if points is not None:
            for p in points:
                if p.done:
                    progress(p)
        if points is None or any(not p.done for p in points):
            prog.update(task, description=f"sweep {what}: starting {cluster.where()}")
        try:
            if points is None:
                points = run_trials(sweep, axes, args.trials, args.sampler, args.seed,
                                    objectives, args.batch, cluster, progress)
            else:
                run_grid(sweep, points, cluster, progress)
        except KeyboardInterrupt:
            kept = sum(1 for p in sweep.points.values() if p.cfg is not None and  # on disk
                       all(Path(t["path"]).exists() for t in p.parts.values()))
            print(f"zeroskip: interrupted: {kept} finished point(s) kept in {out / 'points'}; "
                  "rerun the same command to compute the rest", file=sys.stderr)
            raise
        except SweepError as e:
            raise cli.CliError(str(e)) from None
        finally:
            cluster.close()
    dt = time.perf_counter() - t0
    rows = [point_row(sweep, p) for p in points]
    mark_pareto(rows)
    names = [a.name for a in axes]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "sweep.csv")
    rows_digest = _digest([what, rows])
    pngs = [out / f for f in earlier.get("plots", [])]
    if earlier.get("rows_digest") != rows_digest or not all(p.exists() for p in pngs):
        pngs = plot(rows, names, out, what)  # else the plots of these very rows are there
    cached = sum(1 for p in points if p.cfg and not set(p.parts) - p.cached)
    report = {"block": args.block, "source": source, "base": base.to_dict(),
              "grid": args.grid,
              "trials": args.trials, "sampler": args.sampler if args.trials else None,
              "seed": args.seed if args.trials else None,
              "batch": args.batch if args.trials else None,
              "objectives": objectives if args.trials else None,
              "points": len(rows), "from_cache": cached, "tasks_run": sweep.computed,
              "seconds": round(dt, 3), "ran_on": cluster.where() if sweep.computed else None,
              "rows": rows, "rows_digest": rows_digest, "plots": [p.name for p in pngs],
              "complete": all(p.done for p in points)}
    write_atomic(out / "sweep.json", json.dumps(report, indent=1, allow_nan=False))
    print_summary(rows, names, f"{what}: {len(rows)} point{'s' * (len(rows) != 1)}, "
                  f"{cached} from the cache, "
                  f"{sweep.computed} task(s) run in {dt:.2f} s"
                  + (f" on {cluster.where()}" if sweep.computed else ""))
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}"
          + (f", {', '.join(p.name for p in pngs)}" if pngs else "")
          + f" and {out / 'points'}/")
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad[:5]:
        print(f"note: {r['point'] or 'invalid'} "
              f"({' '.join(f'{a}={r[a]}' for a in names)}): {r['status']}: {r['error']}")
    if len(bad) > 5:
        print(f"note: {len(bad) - 5} more point(s) not ok (sweep.csv has them)")


def _source_name(source: dict) -> str:
    if source["kind"] == "network":
        return source["network"]
    return Path(source.get("topology") or source.get("model")).stem


def print_summary(rows: list[dict], axes: list[str], title: str) -> None:
    """The points on the cycles-energy frontier (every point when there are few)."""
    from rich.table import Table

    from zeroskip import cli

    shown = rows if len(rows) <= 20 else [r for r in rows if r["pareto_cycles_energy"]]
    print(title + ("" if shown is rows else "; the points on the cycles-energy Pareto frontier "
                   "(every point is in sweep.csv):"))
    t = Table()
    for col in (*axes, "cycles", "energy µJ", "util", "accuracy", "LUT4", "Fmax MHz",
                "verified", "Pareto", "status"):
        t.add_column(col, justify="right")
    for r in shown:
        t.add_row(*(str(r[a]) for a in axes),
                  "-" if r["cycles"] is None else f"{r['cycles']:,}",
                  "-" if r["energy_pj"] is None else f"{r['energy_pj'] / 1e6:.3f}",
                  "-" if r["utilization"] is None else f"{r['utilization']:.1%}",
                  "-" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
                  "-" if r["luts"] is None else f"{r['luts']:,}",
                  "-" if r["fmax_mhz"] is None else f"{r['fmax_mhz']:.1f}",
                  r["verified"] or "-", "*" if r["pareto_cycles_energy"] else "",
                  r["status"])
    cli._console().print(t)
