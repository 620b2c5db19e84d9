"""Every bad input of train.py and visualize.py: one line naming it, a non-zero exit, no outputs.

The tables live in tests/faults.py (the bad inputs, and the damaged ones: empty, newer, cut or
misshapen files); benchmarks/faults.py runs the same cases for its figures.  A case marked
`goes_on` is not an error: the job goes on and says so in one line.
"""

from pathlib import Path

import pytest

from tests.faults import (BAD_INPUTS, DAMAGED_INPUTS, bad_input_counts, malicious_checkpoints, malicious_loads,
                          run_bad_inputs)


@pytest.fixture(scope="module")
def outcomes(fault_inputs, tmp_path_factory):
    rows = run_bad_inputs(fault_inputs, tmp_path_factory.mktemp("bad_inputs"), preload=True)
    return {row["case"]: row for row in rows}


def test_the_table_covers_both_scripts_and_fifteen_cases():
    assert len(BAD_INPUTS) >= 15
    assert {case.script for case in BAD_INPUTS} == {"train.py", "visualize.py"}


def test_the_damaged_inputs_are_counted_apart():
    assert {case.script for case in DAMAGED_INPUTS} == {"train.py", "visualize.py"}
    names = [case.name for case in BAD_INPUTS + DAMAGED_INPUTS]
    assert len(set(names)) == len(names)
    rows = [{"damaged": case in DAMAGED_INPUTS, "clean": True} for case in BAD_INPUTS + DAMAGED_INPUTS]
    assert bad_input_counts(rows) == {"bad_inputs_tried": len(BAD_INPUTS), "bad_inputs_clean": len(BAD_INPUTS),
                                      "damaged_inputs_tried": len(DAMAGED_INPUTS),
                                      "damaged_inputs_clean": len(DAMAGED_INPUTS)}


@pytest.mark.parametrize("case", [case.name for case in BAD_INPUTS + DAMAGED_INPUTS])
def test_bad_input_is_rejected_cleanly(outcomes, case):
    row = outcomes[case]
    assert row["clean"], f"{row['why']}\n{row['stderr']}"


def test_crafted_checkpoints_never_run_their_code(outcomes, fault_inputs, tmp_path):
    marker = tmp_path / "PWNED"
    evil = {name: str(path) for name, path in malicious_checkpoints(tmp_path / "evil", marker).items()}
    refused = malicious_loads(evil)
    assert refused and all(refused.values()), refused
    assert not marker.exists()
    # The CLI case of the table loaded one too (the whole-file exploit): its marker is absent as well.
    assert outcomes["checkpoint that runs code"]["clean"]
    assert not (Path(fault_inputs["evil"]).parent / "PWNED").exists()
