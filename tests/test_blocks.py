"""The block records: one declaration per block, read by every subcommand; one import name."""

import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from zeroskip import blocks
from zeroskip.cli import build_parser, main
from zeroskip.hw.config import SystolicConfig, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {"gen": "rtl", "sim": "simulator", "verify": "verifier", "synth": "rtl",
               "gen-axi": "rtl"}


@dataclass(frozen=True)
class FakeConfig(SystolicConfig):
    block = "fake"


def fake_block(name="fake", **parts) -> blocks.Block:
    """A block declared in this one place: the dense array's parts under a new name."""
    parts = {"rtl": "zeroskip.hw.systolic:SystolicBlock", "simulator": "zeroskip.sim.systolic",
             "verifier": "tb.systolic_cases:verify_layer", **parts}
    return blocks.Block(name, "a block only the tests know", FakeConfig,
                        {"default": FakeConfig(rows=2, cols=2, acc_depth=16)}, **parts)


def _block_choices(subcommand: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(next(a for a in sub.choices[subcommand]._actions if a.dest == "block").choices)


def test_every_subcommand_takes_exactly_the_blocks_with_its_part():
    for subcommand, part in SUBCOMMANDS.items():
        assert _block_choices(subcommand) == blocks.names(part), subcommand
    assert set(blocks.names()) == {"systolic", "snapea", "combined", "nullhop"}
    for part in SUBCOMMANDS.values():
        assert set(blocks.names(part)) == set(blocks.names()), part


def test_a_fake_block_declared_once_is_in_every_subcommand(tmp_path, capsys):
    with blocks.registered(fake_block()):
        for subcommand in SUBCOMMANDS:
            assert "fake" in _block_choices(subcommand), subcommand
        assert main(["presets"]) == 0
        assert any(line.split()[:2] == ["fake", "default"]
                   for line in capsys.readouterr().out.splitlines())
        assert main(["sim", "fake", "--network", "vgg16", "--json", str(tmp_path / "r.json")]) == 0
        assert main(["gen", "fake", "-o", str(tmp_path)]) == 0
        assert "module zeroskip_fake" in (tmp_path / "zeroskip_fake.v").read_text()
        assert config_from_dict(FakeConfig(rows=3).to_dict()) == FakeConfig(rows=3)
    assert "fake" not in blocks.names()


def test_a_block_without_a_part_is_not_offered_where_that_part_is_needed():
    with blocks.registered(fake_block(verifier=None)):
        assert "fake" in _block_choices("sim") and "fake" not in _block_choices("verify")
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["verify", "fake"])
        assert e.value.code == 2
        with pytest.raises(ValueError, match="has no verifier; blocks with one: systolic"):
            blocks.get_block("fake", "verifier")


def test_a_block_is_declared_once_with_a_default_preset():
    with pytest.raises(ValueError, match="declared twice"):
        blocks.register(fake_block("systolic"))
    with pytest.raises(ValueError, match="no 'default' preset"):
        blocks.Block("x", "", FakeConfig, {"tiny": FakeConfig()})
    with pytest.raises(ValueError, match="is a SystolicConfig, not a FakeConfig"):
        blocks.Block("x", "", FakeConfig, {"default": SystolicConfig()})


@pytest.mark.parametrize("block", blocks.names())
def test_every_preset_round_trips_through_its_json(block):
    for cfg in blocks.get_block(block).presets.values():
        assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown block 'nosuch'"):
        config_from_dict({"block": "nosuch"})


def test_the_wheel_installs_one_top_level_name(tmp_path):
    """hw/, sim/ and models/ go in as zeroskip.*; tb/, tests/ and scripts/ stay out."""
    src = tmp_path / "src"  # a copy: building writes build/ beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "zeroskip-out*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("zeroskip-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"zeroskip"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "zeroskip/hw/config.py" in names and "zeroskip/cli.py" in names
    assert not [n for n in names if "/test_" in n or n.startswith(("tb/", "tests/"))]


def test_generic_names_are_not_importable_from_outside_the_checkout(tmp_path):
    code = ("import importlib.util as u; import zeroskip.hw.config; "
            "print([m for m in ('hw', 'sim', 'models', 'scripts', 'tb') if u.find_spec(m)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("block", blocks.names())
def test_every_part_of_every_record_imports_and_simulators_share_one_api(block):
    record = blocks.get_block(block)
    for part in blocks.PARTS:
        if getattr(record, part) is not None:
            assert callable(record.part(part)) or part == "simulator", part
    sim = record.part("simulator")
    missing = [name for name in blocks.SIMULATOR_API if not callable(getattr(sim, name, None))]
    assert not missing, f"{sim.__name__} lacks {missing}"
    layouts = record.part("layouts")(record.default)
    assert layouts is not None


def failing_verifier(cfg, layer, x, build_dir):
    raise AssertionError("output 3: got 7, want 9")


def test_a_failed_verification_exits_non_zero(monkeypatch, capsys):
    from tb import runner

    monkeypatch.setattr(runner, "check_icarus", lambda: None)
    with blocks.registered(fake_block(verifier="tests.test_blocks:failing_verifier")):
        assert main(["verify", "fake", "--layer", "conv1"]) == 2
    captured = capsys.readouterr()
    assert "conv1: FAILED: output 3: got 7, want 9" in captured.out
    assert captured.err.strip().startswith(
        "zeroskip: error: 1 of 1 layers failed RTL verification (build and logs in ")
