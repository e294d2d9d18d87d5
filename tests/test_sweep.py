"""``zeroskip sweep``: its points against ``zeroskip sim``, its cache, a killed worker, a
LocalCluster started here, a scheduler in another process, and its one-line errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zeroskip import cli
from zeroskip.cli import main
from zeroskip.commands import sweep

GRID = ["--grid", "rows=4,8,16", "cols=4,8,16"]


class External:
    """``dask scheduler`` and one ``dask worker`` (resource synth only), each its own process,
    started by the first test so that they boot while the first tests run."""

    def __init__(self, tmp: Path):
        env = dict(os.environ)
        self.file = tmp / "scheduler.json"
        quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                        "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                        "--scheduler-file", str(self.file)], **quiet),
                      subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                        "--scheduler-file", str(self.file), "--nthreads", "1",
                                        "--no-dashboard", "--resources", "synth=1",
                                        "--preload", "zeroskip.sim.systolic"], **quiet)]

    @property
    def address(self) -> str:
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return json.loads(self.file.read_text())["address"]

    def stop(self):
        for p in self.procs:  # nothing of theirs is worth a clean shutdown
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    ext = External(tmp_path_factory.mktemp("scheduler"))
    yield ext
    ext.stop()


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, as the sweep's own LocalCluster has."""
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      resources={"synth": 1, "rtl": 1}, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c, Client(c) as client:
        yield c, client


@pytest.fixture(scope="module")
def digits_sim():
    """``zeroskip sim`` itself (cmd_sim, its options and its JSON) on the digits workload, loaded
    once through the loader it uses (in the background, while the sweep runs)."""
    loaded = {}
    loader = threading.Thread(target=lambda: loaded.update(wl=cli.load_workload("digits")),
                              daemon=True)
    loader.start()

    def run(tmp_path, *options) -> dict:
        loader.join()
        wl = loaded["wl"]
        out = tmp_path / f"sim{'_'.join(options)}.json"
        real = cli.load_source
        cli.load_source = lambda args: wl
        try:
            assert main(["sim", *options, "--network", "digits", "--json", str(out)]) == 0
        finally:
            cli.load_source = real
        return json.loads(out.read_text())
    return run


def read_rows(out: Path) -> list[dict]:
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["point"] == rows[0]["point"]
    return rows


def sim_files(out: Path) -> list[Path]:
    return sorted(out.glob("points/*/sim-*.json"))


def test_grid_on_a_local_cluster_equals_zeroskip_sim(external, digits_sim, cluster, tmp_path,
                                                      capsys):
    # ``external`` is not used here: its processes boot meanwhile, for the test that is
    c, _ = cluster
    out = tmp_path / "sweep"
    t0 = time.perf_counter()
    assert main(["sweep", "systolic", "--network", "digits", *GRID, "--scheduler",
                 c.scheduler_address, "-o", str(out)]) == 0
    first = time.perf_counter() - t0
    rows = read_rows(out)
    assert [(int(r["rows"]), int(r["cols"])) for r in rows] == [
        (r, k) for r in (4, 8, 16) for k in (4, 8, 16)]
    for r in rows:
        assert r["status"] == "ok", r
        sim = digits_sim(tmp_path, "systolic", "--rows", r["rows"], "--cols", r["cols"])
        assert int(r["cycles"]) == sim["totals"]["cycles"]
        assert float(r["energy_pj"]) == pytest.approx(sim["totals"]["energy_pj"], rel=1e-12)
        assert float(r["utilization"]) == pytest.approx(sim["totals"]["utilization"])
    # the frontier: no point is better in both cycles and energy than one marked on it
    front = [r for r in rows if r["pareto_cycles_energy"] == "True"]
    assert front
    for f in front:
        assert not any(int(r["cycles"]) <= int(f["cycles"]) and
                       float(r["energy_pj"]) < float(f["energy_pj"]) for r in rows)
    for ext in ("png", "svg"):
        assert (out / f"pareto_cycles_energy.{ext}").stat().st_size > 1000
    assert not (out / "pareto_throughput_luts.png").exists()  # no synthesis figures
    capsys.readouterr()

    # a rerun reads every point from its folder: it does not even reach a scheduler
    before = {p: p.stat().st_mtime_ns for p in sim_files(out)}
    assert len(before) == 9
    t0 = time.perf_counter()
    assert main(["sweep", "systolic", "--network", "digits", *GRID, "--scheduler",
                 "tcp://127.0.0.1:9", "-o", str(out)]) == 0
    rerun = time.perf_counter() - t0
    assert rerun < 0.1 * first, (rerun, first)
    assert "9 from the cache, 0 task(s) run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in sim_files(out)} == before
    assert read_rows(out) == rows

    # a lost result is recomputed, and only that one
    lost = sim_files(out)[4]
    lost.unlink()
    assert main(["sweep", "systolic", "--network", "digits", *GRID, "--scheduler",
                 c.scheduler_address, "-o", str(out)]) == 0
    assert "8 from the cache, 1 task(s) run" in capsys.readouterr().out
    assert lost.exists() and read_rows(out) == rows
    for p, t in before.items():
        assert p == lost or p.stat().st_mtime_ns == t


def write_topology(tmp_path) -> Path:
    path = tmp_path / "two.csv"
    path.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, "
                    "Channels, Num Filter, Strides,\n"
                    "c1, 10, 10, 3, 3, 8, 16, 1,\nc2, 6, 6, 3, 3, 16, 16, 1,\n")
    return path


def test_synthesis_figures_and_the_throughput_frontier(cluster, tmp_path, monkeypatch):
    """--synth takes the figures that the synthesis cache has (seeded here: no synthesis runs)
    and plots throughput against LUT4 with its frontier."""
    from zeroskip.commands import fpga
    from zeroskip.hw.config import SystolicConfig

    monkeypatch.setenv("ZEROSKIP_CACHE", str(tmp_path / "cache"))
    luts = {(4, 4): 9000, (4, 8): 16000, (4, 16): 30000}
    fmax = {(4, 4): 110.0, (4, 8): 120.0, (4, 16): 40.0}  # 4x16: more LUT4 and slower
    for (r, k), n in luts.items():
        fpga.store_synth({"luts": n, "ffs": n // 2, "dsps": 0, "brams": 8,
                          "fmax_mhz": fmax[(r, k)]}, SystolicConfig(rows=r, cols=k), "ecp5")
    out = tmp_path / "sweep"
    topo = write_topology(tmp_path)
    assert main(["sweep", "systolic", "--topology", str(topo), "--grid", "rows=4",
                 "cols=4,8,16", "--synth", "--scheduler", cluster[0].scheduler_address,
                 "-o", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    wl = cli.load_source(cli.build_parser().parse_args(
        ["sim", "systolic", "--topology", str(topo)]))
    for r in rows:
        cfg = SystolicConfig(rows=int(r["rows"]), cols=int(r["cols"]))
        assert int(r["cycles"]) == cli.simulate("systolic", cfg, wl, None).totals()["cycles"]
        assert int(r["luts"]) == luts[(cfg.rows, cfg.cols)]
        assert float(r["images_per_s"]) == pytest.approx(
            fmax[(cfg.rows, cfg.cols)] * 1e6 / int(r["cycles"]))
    front = {(r["rows"], r["cols"]) for r in rows if r["pareto_throughput_luts"] == "True"}
    expect = sweep.pareto_front([(int(r["luts"]), -float(r["images_per_s"])) for r in rows])
    assert front == {(r["rows"], r["cols"]) for r, f in zip(rows, expect) if f}
    assert ("4", "4") in front and ("4", "16") not in front
    for stem in ("pareto_cycles_energy", "pareto_throughput_luts"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").exists()


def test_a_killed_worker_loses_no_finished_point(cluster, tmp_path):
    """A worker is killed (SIGKILL) as soon as the other one has finished a point: the sweep
    still completes every point, on the worker left, and the finished one is not redone."""
    c, client = cluster
    pids = client.run(os.getpid)
    out = tmp_path / "sweep"
    seen = {}

    def kill_when_a_point_is_done():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = sim_files(out)
            if files:
                first = json.loads(files[0].read_text())
                seen.update(file=files[0], mtime=files[0].stat().st_mtime_ns,
                            done_at_kill=len(files), writer=first["worker"])
                pid = next(p for p in pids.values() if not first["worker"].endswith(f":{p}"))
                os.kill(pid, signal.SIGKILL)
                seen["killed"] = pid
                return
            time.sleep(0.02)
    watcher = threading.Thread(target=kill_when_a_point_is_done)
    watcher.start()
    try:
        # NullHop's simulator takes a while per point (it walks the sparse data)
        assert main(["sweep", "nullhop", "--network", "digits", "--grid",
                     "macs=4..32", "-o", str(out), "--scheduler", c.scheduler_address]) == 0
    finally:
        watcher.join()
    assert "killed" in seen and seen["done_at_kill"] < 4, seen
    rows = read_rows(out)
    assert [int(r["macs"]) for r in rows] == [4, 8, 16, 32]
    assert all(r["status"] == "ok" for r in rows), rows
    assert seen["file"].stat().st_mtime_ns == seen["mtime"]
    assert len(sim_files(out)) == 4


def test_a_result_lost_with_its_worker_is_read_from_its_file_or_run_again(tmp_path, monkeypatch):
    """When a worker dies between finishing a part and handing its result over, fetching the
    result fails: the sweep takes the file the worker wrote, else submits the part again (and
    reports the part as lost after ``ATTEMPTS`` tries)."""
    import distributed

    from zeroskip.hw.config import SystolicConfig
    from zeroskip.sim.energy import load_table

    class Lost(Exception):
        pass

    class Future:
        def __init__(self, fn, task, fail):
            self.fn, self.task, self.fail = fn, task, fail

        def result(self):
            if self.fail:
                raise Lost("the worker holding it died")
            return self.fn(self.task)

    class Client:
        def __init__(self, fail):
            self.fail, self.keys = fail, []

        def submit(self, fn, task, key, resources, pure):
            self.keys.append(key)
            return Future(fn, task, self.fail(key, task))

    class AsCompleted:
        def __init__(self, futures):
            self.queue = list(futures)

        def __iter__(self):
            while self.queue:
                yield self.queue.pop(0)

        def add(self, fut):
            self.queue.append(fut)
    monkeypatch.setattr(distributed, "as_completed", AsCompleted)

    class Cluster(sweep.Cluster):
        def __init__(self, client):
            super().__init__(None, None)
            self.client = client

    topo = write_topology(tmp_path)
    source = {"kind": "topology", "topology": str(topo)}

    def run(fail):
        s = sweep.Sweep("systolic", SystolicConfig(), tmp_path / "out", source, load_table(),
                        "default")
        points = [s.point({"rows": r}) for r in (2, 4)]
        client = Client(fail)
        sweep.run_grid(s, points, Cluster(client), lambda p: None)
        return points, client.keys

    # the first attempt of rows=2 "finished" (its file is written) but its result is lost
    def finished_then_lost(key, task):
        if task["config"]["rows"] == 2 and "retry" not in key:
            sweep.sim_task(task)
            return True
        return False
    points, keys = run(finished_then_lost)
    assert len(keys) == 2 and all(p.results["sim"]["status"] == "ok" for p in points)

    # lost before its file was written: submitted again, and the second attempt delivers
    for f in (tmp_path / "out").glob("points/*/sim-*.json"):
        f.unlink()
    points, keys = run(lambda key, task: task["config"]["rows"] == 4 and "retry" not in key)
    assert len(keys) == 3 and keys[-1].endswith("-retry1")
    assert all(p.results["sim"]["status"] == "ok" for p in points)

    # lost every time: reported, not kept
    for f in (tmp_path / "out").glob("points/*/sim-*.json"):
        f.unlink()
    points, keys = run(lambda key, task: task["config"]["rows"] == 4)
    assert len(keys) == 1 + sweep.ATTEMPTS
    lost = points[1].results["sim"]
    assert lost["status"] == "error" and lost["error"].startswith("task lost: Lost: ")
    assert not list((tmp_path / "out").glob(f"points/{points[1].key}/sim-*.json"))


def test_default_is_a_local_cluster_of_one_process_per_core(tmp_path, monkeypatch, capsys):
    """Without --scheduler the sweep starts a LocalCluster: one single-threaded worker process
    per core, each offering the synth and rtl resources (run here with its workers as threads
    of this process, so that the test does not start new Python processes)."""
    import distributed

    asked = {}
    real = distributed.LocalCluster

    def local_cluster(**kw):
        asked.update(kw)
        return real(**dict(kw, processes=False))
    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    out = tmp_path / "sweep"
    assert main(["sweep", "systolic", "--topology", str(write_topology(tmp_path)), "--grid",
                 "cols=2,4", "-o", str(out)]) == 0
    assert asked["n_workers"] == os.cpu_count() and asked["threads_per_worker"] == 1
    assert asked["processes"] is True and asked["resources"] == {"synth": 1, "rtl": 1}
    assert f"on a local cluster of {os.cpu_count()} worker process(es)" in \
        capsys.readouterr().out
    assert [r["status"] for r in read_rows(out)] == ["ok", "ok"]


def test_sweep_and_trials_on_a_scheduler_in_another_process(external, tmp_path, capsys):
    """The sweep connects to ``dask scheduler`` with a ``dask worker``, both processes of their
    own."""
    address = external.address
    topo = write_topology(tmp_path)
    out = tmp_path / "sweep"
    assert main(["sweep", "systolic", "--topology", str(topo), "--grid", "rows=2,4",
                 "--scheduler", address, "-o", str(out)]) == 0
    assert f"on the scheduler at {address}" in capsys.readouterr().out
    rows = read_rows(out)
    assert [r["rows"] for r in rows] == ["2", "4"] and all(r["status"] == "ok" for r in rows)
    # --verify asks for a resource this worker does not offer: said, not waited for
    assert main(["sweep", "systolic", "--topology", str(topo), "--grid", "rows=2,4",
                 "--verify", "--scheduler", address, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offers the resource 'rtl'" in err[0]
    # an Optuna (TPE) search on the same scheduler: 6 trials of a 14-point space, 3 at a time;
    # the same command again picks the same points, all from the cache (no scheduler needed)
    trials = tmp_path / "trials"
    argv = ["sweep", "systolic", "--topology", str(topo), "--grid", "rows=2..8", "cols=2,4",
            "--trials", "6", "--batch", "3", "--seed", "3", "-o", str(trials)]
    assert main([*argv, "--scheduler", address]) == 0
    rows = read_rows(trials)
    assert 1 <= len(rows) <= 6 and all(r["status"] == "ok" for r in rows)
    assert all(2 <= int(r["rows"]) <= 8 and r["cols"] in ("2", "4") for r in rows)
    assert json.loads((trials / "sweep.json").read_text())["trials"] == 6
    capsys.readouterr()
    assert main([*argv, "--scheduler", "tcp://127.0.0.1:9"]) == 0
    assert f"{len(rows)} from the cache, 0 task(s)" in capsys.readouterr().out
    assert read_rows(trials) == rows


@pytest.mark.rtl
def test_verify_runs_each_points_rtl(cluster, tmp_path, capsys):
    """--verify: the point's RTL on the digits net's fc2, checked by zeroskip verify's verifier
    (bit-exact outputs, the simulator's cycle count), as a task asking for the rtl resource."""
    out = tmp_path / "sweep"
    argv = ["sweep", "systolic", "--network", "digits", "--preset", "tiny", "--grid", "cols=3",
            "--verify", "--scheduler", cluster[0].scheduler_address, "-o", str(out)]
    assert main(argv) == 0
    (row,) = read_rows(out)
    assert row["status"] == "ok" and row["verified"] == "pass" and row["verify_layer"] == "fc2"
    assert int(row["verify_cycles"]) > 0
    assert len(list(out.glob("points/*/verify-*.json"))) == 1
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 from the cache, 0 task(s) run" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--grid", "depth=4,8"], "systolic has no field 'depth'; its fields: rows, cols, "
                              "acc_depth, act_bits"),
    (["--grid", "rows=4,300"], "--grid rows=300: rows must be in 1..256, not 300"),
    (["--grid", "rows=4,eight"], "'eight' is not a value of rows (an integer in 1..256)"),
    (["--grid", "rows"], "--grid takes FIELD=V1,V2,... or FIELD=LO..HI"),
    (["--grid", "rows=8..4"], "the range is empty"),
    (["--grid", "rows=4", "rows=8"], "--grid rows is given twice"),
    (["--rows", "4", "--grid", "rows=4,8"], "--rows and --grid rows=...: give one"),
    ([], "give the fields to sweep: --grid FIELD=V1,V2,..."),
    (["--grid", "rows=4", "--trials", "0"], "--trials must be at least 1"),
    (["--grid", "rows=4", "--seed", "3"], "--seed applies to --trials only"),
    (["--grid", "rows=4", "--trials", "3", "--batch", "0"], "--batch must be at least 1"),
    (["--grid", "rows=4", "--trials", "3", "--objectives", "cycles,speed"],
     "unknown objective 'speed'"),
    (["--grid", "rows=4", "--trials", "3", "--objectives", "luts"], "add --synth"),
    (["--grid", "rows=4", "--scheduler", "localhost:8786"], "like tcp://HOST:PORT"),
    (["--grid", "rows=4", "--workers", "0"], "--workers must be at least 1"),
    (["--grid", "rows=4", "--network", "lenet"], "unknown network 'lenet'"),
    (["--grid", "rows=4", "--verify-layer", "conv1"], "--verify-layer applies to --verify"),
    (["--grid", "rows=4", "--model", "/nonexistent.onnx"], "is not a file, a module:function"),
    (["--grid", "rows=4", "--topology", "/nonexistent.csv"], "does not exist"),
    (["--grid", "rows=4", "--energy-table", "/nonexistent.json"], "does not exist"),
    (["--grid", "rows=2..256", "cols=2..256"], "the grid has 65,025 points"),
])
def test_bad_input_gives_one_line_error_and_writes_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "systolic", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zeroskip: error:") and needle in err[0], err
    assert not out.exists()


def test_bad_combinations(tmp_path, capsys):
    # a value outside the field's own range is bad input; NullHop's macs are powers of two
    assert main(["sweep", "nullhop", "--grid", "macs=4,6", "-o", str(tmp_path / "a")]) == 2
    assert "macs must be a power of two, not 6" in capsys.readouterr().err
    # combinations that break a rule across fields, and nothing else, are bad input too
    assert main(["sweep", "nullhop", "--grid", "macs=1,2", "macs_per_channel=4",
                 "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no point of the grid is a valid nullhop configuration" in err
    assert "macs_per_channel must be 1, 2, 4 or 8 and at most macs" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_space_and_frontier():
    axis = sweep.parse_axis("nullhop", "macs=3..40")
    assert axis.grid_values() == (4, 8, 16, 32)  # the field takes powers of two only
    assert sweep.parse_axis("systolic", "rows=2..5").grid_values() == (2, 3, 4, 5)
    assert sweep.parse_axis("combined", "gamma=0.25,0.5").grid_values() == (0.25, 0.5)
    assert sweep.parse_axis("systolic", "acc-bits=24,32").name == "acc_bits"
    base = sweep.config_with(cli.config_from_args("systolic", cli.build_parser().parse_args(
        ["sim", "systolic"])), {"acc_bits": 24})
    assert base.fxp.acc_bits == 24 and base.fxp.bias_bits == 24  # as --acc-bits does
    assert sweep.pareto_front([(1, 5), (2, 2), (3, 3), (5, 1), (1, 5)]) == [
        True, True, False, True, True]
