"""SIGKILL at a random moment of each stage, then the same command again: nothing lost or torn.

One trial per stage here; `python benchmarks/faults.py` runs ten.
"""

import pytest

from benchmarks.faults import STAGES, broken_inputs, kill_trials


@pytest.fixture(scope="module")
def inputs(small_classifier, small_priors, tmp_path_factory):
    checkpoints = {"classifier": small_classifier[1]["best_checkpoint"],
                   "generator": small_priors["generator"][1]["last_checkpoint"],
                   "prior": small_priors["prior"][1]["last_checkpoint"]}
    return broken_inputs(tmp_path_factory.mktemp("inputs"), checkpoints)


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_killed_run_completes_on_rerun_with_nothing_lost_or_truncated(stage, inputs, tmp_path):
    # Mid-run moments (30-70% of an uninterrupted run), so the kill lands while the job works.
    (row,) = kill_trials(inputs, tmp_path, trials=1, seed=1, stages=[stage], moments=(0.3, 0.7))
    assert row["killed"], row
    assert row["recovered"], row
    assert (row["frames_lost"], row["frames_duplicated"], row["truncated"]) == (0, 0, 0), row
