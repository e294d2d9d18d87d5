"""The CLI: one-line errors with a non-zero exit, JSON schema of `sim`."""

import json

import pytest

from zeroskip.cli import main
from tb import runner


@pytest.mark.parametrize("argv,needle", [
    (["sim", "systolic", "--rows", "0"], "rows must be"),
    (["sim", "systolic", "--cols", "-3"], "cols must be"),
    (["sim", "systolic", "--network", "lenet"], "unknown network"),
    (["sim", "systolic", "--network", "vgg16", "--acc-bits", "16"], "too large for the widths"),
    (["sim", "systolic", "--preset", "huge"], "invalid choice: 'huge'"),
    (["run", "--macs", "128"], "snapea cannot run on 128 MAC units"),
    (["run", "--macs", "lots"], "--macs takes a number of MAC units or 'preset'"),
    (["run", "--macs", "0"], "--macs must be at least 1"),
    (["run", "--preset", "snapea"], "--preset takes BLOCK=NAME"),
    (["sim", "systolic", "--network", "vgg16", "--energy-table", "/nonexistent.json"],
     "does not exist"),
])
def test_bad_input_gives_one_line_error(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zeroskip: error:") and needle in err[0]


def test_sim_json_schema(tmp_path):
    out = tmp_path / "r.json"
    assert main(["sim", "systolic", "--network", "vgg16", "--rows", "32", "--cols", "32",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["layers"]) == 16
    for l in d["layers"]:
        for key in ("name", "cycles", "macs_dense", "macs_performed", "utilization",
                    "energy_pj", "energy_breakdown_pj"):
            assert key in l
        assert l["macs_dense"] == l["macs_performed"]
    assert d["totals"]["cycles"] == sum(l["cycles"] for l in d["layers"])


def test_energy_table_override(tmp_path):
    t = tmp_path / "e.json"
    t.write_text(json.dumps({"dram_byte": 0}))
    out = tmp_path / "r.json"
    assert main(["sim", "systolic", "--network", "alexnet", "--energy-table", str(t),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["totals"]["energy_breakdown_pj"]["dram"] == 0


def test_gen_writes_verilog_and_config(tmp_path):
    assert main(["gen", "systolic", "--rows", "3", "--cols", "2", "-o", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "zeroskip_systolic.json").read_text())["config"]
    assert (cfg["rows"], cfg["cols"]) == (3, 2)
    assert "module zeroskip_systolic" in (tmp_path / "zeroskip_systolic.v").read_text()


def test_missing_icarus_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(runner.SimulatorMissing, match="apt-get install -y iverilog"):
        runner.check_icarus()


def test_verilator_build_optimisation_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(runner.OPT_ENV, "-O0")
    assert "OPT_FAST=-O0" in runner._verilator_env("verilator")["MAKEFLAGS"]
    monkeypatch.delenv(runner.OPT_ENV)
    assert runner.build_opt() == "-Os"
    monkeypatch.setenv(runner.OPT_ENV, "fast")
    with pytest.raises(runner.SimulatorMissing, match="ZEROSKIP_VERILATOR_OPT='fast'.*-O0"):
        runner.build_opt()


def test_verify_without_icarus_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["verify", "systolic", "--layer", "conv1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Icarus Verilog" in err[0] and "apt-get install" in err[0]


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zeroskip: error:"), err
    assert needle in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("argv,needle", [
    (["sim", "systolic", "--images", "-3"], "--images must be in 1..256"),
    (["sim", "systolic", "--images", "0"], "--images must be in 1..256"),
    (["sim", "systolic", "--images", "100000"], "--images must be in 1..256"),
    (["run", "--images", "0"], "--images must be in 1..256"),
    (["sim", "systolic", "--network", "vgg16", "--images", "4"],
     "--images applies to --network digits only"),
    (["sim", "systolic", "--rows", "100000"], "rows must be in 1..256, not 100000"),
    (["sim", "nosuch"], "invalid choice: 'nosuch'"),
    (["sim", "systolic", "--rows", "two"], "invalid int value: 'two'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["sim", "snapea", "--mode", "predictive"], "--mode predictive needs --budget"),
    (["verify", "systolic", "--image", "9999"], "--image must be in 0..255"),
    (["verify", "systolic", "--image", "-1"], "--image must be in 0..255"),
    (["verify", "systolic", "--layer", "conv9"], "unknown layer 'conv9'"),
])
def test_bad_arguments_give_one_line_naming_the_value(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    line = _one_line_error(capsys, needle)
    if "rows" in argv:
        assert "at least one" not in line  # the hint says what the field is, not a lower bound


@pytest.mark.parametrize("value", ["NaN", "1e400", "true", "-1", '"5"'])
def test_energy_table_values_must_be_finite_numbers(value, tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text('{"dram_byte": %s}' % value)
    out = tmp_path / "r.json"
    assert main(["sim", "systolic", "--energy-table", str(table), "--json", str(out)]) == 2
    _one_line_error(capsys, "dram_byte must be a finite number >= 0 (pJ)")
    assert not out.exists()


def test_energy_table_that_is_a_folder(tmp_path, capsys):
    assert main(["sim", "systolic", "--energy-table", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a folder")


@pytest.mark.parametrize("argv", [["gen", "systolic", "--preset", "tiny", "-o"], ["run", "-o"]])
def test_output_folder_that_is_a_file(argv, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("keep me")
    assert main(argv + [str(f)]) == 2
    _one_line_error(capsys, "is a file, not a folder")
    assert f.read_text() == "keep me"


def test_json_output_that_is_a_folder(tmp_path, capsys):
    assert main(["sim", "systolic", "--network", "vgg16", "--json", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a folder; give a file name")


def test_nothing_is_created_before_the_arguments_are_checked(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["run", "--network", "foo", "-o", str(out)]) == 2
    _one_line_error(capsys, "unknown network 'foo'")
    assert not out.exists()


def test_verify_refuses_what_the_simulator_refuses(capsys):
    """A layer whose dot product can overflow the accumulator is not verified as bit-exact."""
    assert main(["verify", "systolic", "--rows", "2", "--cols", "2", "--acc-bits", "20",
                 "--layer", "conv2"]) == 2
    _one_line_error(capsys, "overflows a 20-bit accumulator")


def test_synth_with_an_unknown_package_fails_before_synthesis(tmp_path, capsys):
    from zeroskip.commands import fpga

    try:
        fpga.find_tool("nextpnr-ice40")
    except RuntimeError:
        pytest.skip("nextpnr-ice40 is not installed")
    assert main(["synth", "systolic", "--preset", "tiny", "--target", "ice40", "--package",
                 "nosuch", "--work-dir", str(tmp_path / "w")]) == 2
    _one_line_error(capsys, "nextpnr does not know package 'nosuch'")
    assert not list((tmp_path / "w").glob("*.v"))  # no Verilog written, no Yosys run


def _help(argv, capsys) -> str:
    assert main(argv + ["--help"]) == 0
    return capsys.readouterr().out


def test_help_lists_only_the_chosen_blocks_options(capsys):
    import re

    def options(text):
        return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    snapea = _help(["sim", "snapea"], capsys)
    assert {"--lanes", "--mode"} <= options(snapea) and "--rows" not in options(snapea)
    systolic = _help(["sim", "systolic"], capsys)
    assert "--rows" in options(systolic) and not {"--lanes", "--mode"} & options(systolic)
    # each option says what it is, its range and the default preset's value
    assert "array rows: reduction terms per pass; 1..256; default 8" in " ".join(
        systolic.split())


def test_an_option_of_another_block_is_refused(capsys):
    assert main(["sim", "nullhop", "--rows", "4"]) == 2
    _one_line_error(capsys, "unrecognized arguments: --rows 4")


def test_version(capsys):
    from zeroskip import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"zeroskip {__version__}"


def test_piped_tables_keep_every_number_whole(capsys):
    """Output that is not a terminal is never squeezed to a width (no cut numbers)."""
    from zeroskip.sim import systolic
    from zeroskip.hw.config import SystolicConfig
    from zeroskip.sim.workload import load

    assert main(["sim", "systolic", "--network", "vgg16", "--rows", "32", "--cols", "32"]) == 0
    out = capsys.readouterr().out
    wl = load("vgg16")
    total = systolic.simulate_network(wl, SystolicConfig(rows=32, cols=32)).totals()["cycles"]
    assert f"{total:,}" in out
    assert "…" not in out
