"""The testbench Scoreboard (tb/scoreboard.py) on hand-made transfers: it passes a run that
matches its case and reports a wrong payload, a missing beat, an extra beat, an input beat
left untaken and a cycle off the prediction; a Case survives its npz file."""

import pytest

from tb.scoreboard import Case, Scoreboard


def a_case(**kw) -> Case:
    return Case(inputs={"cmd": [1, 2], "acts": [0x1ff, 7, 8]},
                outputs={"out": [0x12, 0x34, 0x56]}, masks={"out": [0xff, 0xff, 0x0f]},
                cycles=9, out_cycles={"out": [4, 6, 8]}, **kw)


def a_run(out=((5, 0x12), (7, 0x34), (9, 0x56)), cmd=(1, 2), acts=(1, 2, 3)) -> dict:
    return {"cmd": [(t, None) for t in cmd], "acts": [(t, None) for t in acts],
            "out": list(out)}


def test_scoreboard_passes_a_run_that_matches_its_case():
    sb = Scoreboard(a_case())
    assert sb.errors(a_run()) == []
    assert sb.cycles == 9  # first command at cycle 1, last output at 9


def test_scoreboard_ignores_padding_bits_outside_the_mask():
    assert Scoreboard(a_case()).errors(a_run(out=((5, 0x12), (7, 0x34), (9, 0xa6)))) == []


def test_scoreboard_reports_the_first_mismatch_with_index_got_and_want():
    errs = Scoreboard(a_case()).errors(a_run(out=((5, 0x12), (7, 0x35), (9, 0x57))))
    assert errs == ["out: 2 of 3 beats differ from the integer reference; first at beat 1: "
                    "got 0x35, want 0x34"]


def test_scoreboard_reports_a_missing_output_beat():
    errs = Scoreboard(a_case()).errors(a_run(out=((5, 0x12), (7, 0x34))))
    assert errs == ["out: 2 of 3 expected beats arrived"]


def test_scoreboard_reports_an_extra_beat_after_the_last_expected_one():
    errs = Scoreboard(a_case()).errors(a_run(out=((5, 0x12), (7, 0x34), (9, 0x56), (12, 1))))
    assert errs == ["out: 1 extra beat(s) after the last expected one, the first at cycle 12: "
                    "0x1"]


def test_scoreboard_reports_an_input_beat_the_block_did_not_take():
    errs = Scoreboard(a_case()).errors(a_run(acts=(1, 2)))
    assert errs == ["acts: the block took 2 of 3 input beats"]


def test_scoreboard_reports_total_and_per_beat_cycles_off_the_prediction():
    errs = Scoreboard(a_case()).errors(a_run(out=((5, 0x12), (8, 0x34), (10, 0x56))))
    assert errs == ["RTL took 10 cycles, the simulator predicted 9",
                    "out: beat 1 left at cycle 7, the step model predicted 6"]


def test_scoreboard_without_a_prediction_checks_outputs_only():
    case = Case(inputs={"cmd": [1]}, outputs={"out": [3]})
    assert Scoreboard(case).errors({"cmd": [(0, None)], "out": [(40, 3)]}) == []


def test_scoreboard_check_raises_with_every_error_and_describes_payloads():
    sb = Scoreboard(a_case(), describe=lambda port, bits: f"lanes {bits & 0xf}, {bits >> 4}")
    with pytest.raises(AssertionError, match=r"got lanes 5, 3, want lanes 4, 3\n"
                                             r"acts: the block took 1 of 3"):
        sb.check(a_run(out=((5, 0x12), (7, 0x35), (9, 0x56)), acts=(1,)))


def test_case_survives_its_npz_file(tmp_path):
    wide = (1 << 200) + 5  # wider than any integer dtype
    case = Case(inputs={"cmd": [wide, 0], "weights": []}, outputs={"out": [3, wide]},
                cycles=12, out_cycles={"out": [3, 11]}, valid_p=0.7, ready_p=0.5, seed=3,
                extra={"max_bytes": 8})
    back = Case.load(case.save(tmp_path / "case.npz"))
    assert back.inputs == case.inputs and back.outputs == case.outputs
    assert back.mask("out")[1] & wide == wide
    assert (back.cycles, back.out_cycles, back.valid_p, back.ready_p, back.seed) == \
        (12, {"out": [3, 11]}, 0.7, 0.5, 3)
    assert int(back.extra["max_bytes"]) == 8
