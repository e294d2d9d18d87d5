"""``zeroskip verify BLOCK`` end to end, from the block's record to the RTL under Icarus."""

import pytest

from zeroskip.cli import main


@pytest.mark.rtl
def test_verify_nullhop_conv1_passes_on_icarus(tmp_path, capsys):
    assert main(["verify", "nullhop", "--layer", "conv1", "--build", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "conv1: 1024 outputs bit-exact vs the integer reference" in out
    assert "= simulator prediction" in out
