"""``zeroskip verify BLOCK`` end to end, from the block's record to the RTL under Icarus."""

import pytest

from zeroskip.cli import main


@pytest.mark.rtl
def test_verify_nullhop_conv1_passes_on_icarus(tmp_path, capsys):
    assert main(["verify", "nullhop", "--layer", "conv1", "--build", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "conv1: 1024 outputs bit-exact vs the integer reference" in out
    assert "= simulator prediction" in out


@pytest.mark.rtl
def test_verify_with_a_relative_build_folder(tmp_path, monkeypatch, capsys):
    """The RTL simulator runs in its own folder; a relative --build still works."""
    monkeypatch.chdir(tmp_path)
    assert main(["verify", "systolic", "--rows", "4", "--cols", "3", "--layer", "fc2",
                 "--build", "vbuild"]) == 0
    assert "fc2: 10 outputs bit-exact" in capsys.readouterr().out
    assert (tmp_path / "vbuild" / "fc2").is_dir()


@pytest.mark.rtl
def test_verify_removes_its_temporary_build_folder(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["verify", "systolic", "--rows", "4", "--cols", "3", "--layer", "fc2"]) == 0
    assert not list(tmp_path.glob("zeroskip-verify-*"))


@pytest.mark.rtl
def test_verify_chooses_the_simulator_of_its_own_run_only(tmp_path, monkeypatch):
    """An in-process ``verify`` (Icarus by default) leaves later runs on their own default."""
    from tb import runner

    monkeypatch.delenv(runner.SIM_ENV, raising=False)
    assert main(["verify", "systolic", "--rows", "4", "--cols", "3", "--layer", "fc2",
                 "--build", str(tmp_path)]) == 0
    assert runner.simulator() == runner.DEFAULT_SIM == "verilator"


@pytest.mark.rtl
def test_verify_on_verilator(tmp_path, capsys):
    assert main(["verify", "systolic", "--rows", "4", "--cols", "3", "--acc-depth", "24",
                 "--layer", "fc2", "--sim", "verilator", "--build", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fc2: 10 outputs bit-exact" in out and "on verilator)" in out


def test_verify_refuses_an_empty_band_and_an_image_of_a_model_network(capsys):
    assert main(["verify", "systolic", "--network", "vgg16", "--layer", "conv3_1",
                 "--band", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--band must be at least 1" in err[0]
    assert main(["verify", "systolic", "--network", "vgg16", "--image", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image applies to --network digits" in err[0]
