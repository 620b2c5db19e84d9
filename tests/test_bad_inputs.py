"""Every bad input of train.py and visualize.py: one line naming it, a non-zero exit, no outputs.

The table lives in tests/faults.py; benchmarks/faults.py runs the same cases for its figures.
"""

from pathlib import Path

import pytest

from tests.faults import BAD_INPUTS, malicious_checkpoints, malicious_loads, run_bad_inputs


@pytest.fixture(scope="module")
def outcomes(fault_inputs, tmp_path_factory):
    rows = run_bad_inputs(fault_inputs, tmp_path_factory.mktemp("bad_inputs"))
    return {row["case"]: row for row in rows}


def test_the_table_covers_both_scripts_and_fifteen_cases():
    assert len(BAD_INPUTS) >= 15
    assert {case.script for case in BAD_INPUTS} == {"train.py", "visualize.py"}


@pytest.mark.parametrize("case", [case.name for case in BAD_INPUTS])
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
