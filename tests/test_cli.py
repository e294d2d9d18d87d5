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
    (["sim", "systolic", "--preset", "huge"], "unknown preset"),
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


def test_verify_without_icarus_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["verify", "systolic", "--layer", "conv1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Icarus Verilog" in err[0] and "apt-get install" in err[0]
