"""SIGKILL at a random moment of each stage, then the same command again: nothing lost or torn.

One trial per stage here; `python benchmarks/faults.py` runs ten.
"""

import pytest

from tests.faults import STAGES, kill_trials
from tests.preloaded import servers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One preloaded interpreter for every run here: its start-up is not what is being killed."""
    with servers(1, tmp_path_factory.mktemp("preloaded")) as idle:
        yield idle.get()


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_killed_run_completes_on_rerun_with_nothing_lost_or_truncated(stage, fault_inputs, server, tmp_path):
    # Mid-run moments (30-70% of an uninterrupted run), so the kill lands while the job works.
    (row,) = kill_trials(fault_inputs, tmp_path, trials=1, seed=1, stages=[stage], moments=(0.3, 0.7),
                         server=server)
    assert row["killed"], row
    assert row["recovered"], row
    assert (row["frames_lost"], row["frames_duplicated"], row["truncated"]) == (0, 0, 0), row
