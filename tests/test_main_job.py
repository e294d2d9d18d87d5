"""The main job's report: totals are sums of layers, and every block's simulated outputs
equal the integer torch reference on the digits net with real activations."""

import pytest
import torch

from zeroskip import blocks
from zeroskip.models.reference import layer_forward
from zeroskip.sim import compare

SIMULATED = blocks.names("simulator")


@pytest.fixture(scope="module")
def workload():
    from zeroskip.sim import workload as wl
    return wl.load("digits", images=2)


@pytest.mark.parametrize("block", SIMULATED)
def test_block_outputs_equal_integer_reference_on_digits(block, workload):
    """One contract for every block: ``layer_outputs`` is the layer's output, pooled where the
    layer pools (on the block or by the host), as the integer reference computes it."""
    record = blocks.get_block(block)
    for i, q in enumerate(workload.quant):
        data = workload.layer_data(i)
        ref = layer_forward(torch.from_numpy(data.x), q).numpy()
        got = record.part("simulator").layer_outputs(data, q.spec, record.default.fxp)
        assert got.shape == ref.shape and (got == ref).all(), f"{block} {q.spec.name}"


def test_report_totals_are_sums_of_layers(workload):
    reports = compare.run_blocks(workload)
    rep = compare.report_dict(workload, reports)
    assert set(rep["blocks"]) == set(SIMULATED)
    for block, d in rep["blocks"].items():
        for key in ("cycles", "macs_dense", "macs_performed", "energy_pj"):
            total = sum(l[key] for l in d["layers"])
            assert d["totals"][key] == pytest.approx(total), (block, key)
        for cat, v in d["totals"]["energy_breakdown_pj"].items():
            assert v == pytest.approx(sum(l["energy_breakdown_pj"][cat] for l in d["layers"]))
    # blocks that change the network report its test accuracy in the comparison table: the
    # early-termination block (exact mode: unchanged) and the column-combined array (its
    # pruned and retrained weights); the others compute the network as it is
    acc = {row["block"]: row["accuracy"] for row in rep["comparison"]}
    assert acc["systolic"] is None and acc["nullhop"] is None
    assert 0.5 < acc["snapea"] <= 1 and 0.5 < acc["combined"] <= 1
    assert acc["combined"] == pytest.approx(reports["combined"].summary["accuracy_after"])


@pytest.mark.parametrize("units", [64, 16])
def test_equal_hardware_every_block_runs_on_the_same_mac_units(units, workload):
    """``zeroskip run``'s default: every block reshaped to the same MAC units, and what its
    simulator reports as MAC units (the utilisation's denominator) is that number."""
    configs = compare.equal_configs(units)
    assert set(configs) == set(SIMULATED)
    reports = compare.run_blocks(workload, configs=configs)
    rows = compare.comparison_rows(reports)
    assert [r["mac_units"] for r in rows] == [units] * len(rows)
    for block, rep in reports.items():
        assert configs[block].mac_units == units
        assert {l.mac_units for l in rep.layers} == {units}, block


def test_preset_kept_as_it_is_without_mac_units():
    configs = compare.equal_configs(None, {"snapea": "check4"})
    assert configs["snapea"] == blocks.get_block("snapea").presets["check4"]
    assert configs["systolic"] == blocks.get_block("systolic").default


@pytest.mark.parametrize("units,presets,needle", [
    (128, {}, "snapea cannot run on 128 MAC units: lanes must be"),
    (48, {}, "nullhop cannot run on 48 MAC units: macs must be a power of two"),
    (64, {"nosuch": "default"}, "no such block"),
    (64, {"snapea": "huge"}, "unknown preset 'huge' for snapea"),
])
def test_equal_hardware_that_cannot_be_had_says_why(units, presets, needle):
    with pytest.raises(ValueError, match=needle):
        compare.equal_configs(units, presets)


def test_area_view_from_the_synthesis_cache(tmp_path, monkeypatch, workload):
    """A synthesis result is found again for the same config and RTL (and only then); the
    area view turns it into throughput at the measured Fmax."""
    from zeroskip.commands import fpga

    monkeypatch.setenv("ZEROSKIP_CACHE", str(tmp_path))
    configs = compare.equal_configs(64, blocks=["systolic", "nullhop"])
    reports = compare.run_blocks(workload, configs=configs)
    fake = {"luts": 20_000, "ffs": 9_000, "dsps": 0, "brams": 4, "fmax_mhz": 100.0}
    fpga.store_synth(fake, configs["systolic"], "ecp5")
    assert fpga.cached_synth(configs["systolic"], "ecp5") == fake
    assert fpga.cached_synth(configs["systolic"].with_mac_units(16), "ecp5") is None
    assert fpga.cached_synth(configs["systolic"], "ecp5", freq=50.0) is None
    rows = {r["block"]: r for r in fpga.area_rows(configs, reports, workload.batch)}
    assert not rows["nullhop"]["synthesised"]
    s = rows["systolic"]
    per_s = 100e6 * workload.batch / reports["systolic"].totals()["cycles"]
    assert s["images_per_s"] == pytest.approx(per_s)
    assert s["images_per_s_per_1k_lut4"] == pytest.approx(per_s / 20)
    paths = compare.plot(reports, tmp_path, "digits", area=list(rows.values()), images=2)
    names = {p.name for p in paths}
    for stem in ("cycles", "energy", "speedup", "area"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
        assert (tmp_path / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


def test_synthesis_cache_key_follows_only_the_blocks_own_sources():
    from zeroskip.commands import fpga

    names = {p.name for p in fpga.rtl_sources("systolic")}
    assert {"systolic.py", "axi.py", "config.py"} <= names
    assert not names & {"nullhop.py", "snapea.py", "combined.py"}
    assert "systolic.py" in {p.name for p in fpga.rtl_sources("combined")}  # it builds on it


def test_run_writes_verilog_from_the_cache_and_generates_it_on_request(tmp_path, monkeypatch):
    """``zeroskip run``'s Verilog: none generated without ``--verilog`` (the report says so and
    an earlier run's file is removed); with it, generated once into the cache (keyed by the
    config and the RTL sources), then copied from the cache, the same bytes as ``gen``."""
    import json

    from zeroskip.cli import main
    from zeroskip.commands import fpga
    from zeroskip.hw.config import SYSTOLIC_PRESETS
    from zeroskip.hw.gen import generate

    monkeypatch.setattr(fpga, "verilog_cache_dir", lambda: tmp_path / "cache")
    cfg = SYSTOLIC_PRESETS["default"].with_mac_units(4)
    out = tmp_path / "v"
    assert fpga.cached_verilog(cfg, out) == (None, False)
    assert not out.exists()
    path, hit = fpga.cached_verilog(cfg, out, generate_missing=True)
    assert (path, hit) == (out / "zeroskip_systolic.v", False)
    fresh = generate(cfg, tmp_path / "gen")
    assert path.read_text() == fresh.read_text()
    path.unlink()
    assert fpga.cached_verilog(cfg, out) == (path, True) and path.read_text() == fresh.read_text()
    other = SYSTOLIC_PRESETS["default"].with_mac_units(16)
    assert fpga.verilog_key(other) != fpga.verilog_key(cfg)
    assert fpga.cached_verilog(other, tmp_path / "o") == (None, False)

    d = tmp_path / "run"
    (d / "verilog").mkdir(parents=True)
    (d / "verilog" / "zeroskip_systolic.v").write_text("// an earlier run's\n")
    argv = ["run", "--network", "digits", "--macs", "4", "-o", str(d)]
    assert main(argv) == 0
    report = json.loads((d / "report.json").read_text())
    assert report["verilog"]["systolic"] == {"file": str(d / "verilog" / "zeroskip_systolic.v"),
                                             "from_cache": True}
    assert report["verilog"]["nullhop"] is None
    assert (d / "verilog" / "zeroskip_systolic.v").read_text() == fresh.read_text()
    monkeypatch.setattr(fpga, "verilog_cache_dir", lambda: tmp_path / "empty")
    assert main(argv) == 0
    report = json.loads((d / "report.json").read_text())
    assert set(report["verilog"].values()) == {None}
    assert not (d / "verilog" / "zeroskip_systolic.v").exists()
