"""Runs that meet: pipelines asking for one stage, visualize.py runs into one run dir, a dying DDP rank.

One small trial each; `python benchmarks/faults.py` runs more (tests/contention.py has them).
"""

from tests.contention import concurrent_pipelines, ddp_rank_kill, shared_run_dir


def test_three_pipelines_at_once_train_each_stage_once(fault_inputs, tmp_path):
    # Encoder and G given: the prior stage is the one contended (the benchmark trains G too).
    row = concurrent_pipelines(fault_inputs, tmp_path, given=("encoder", "generator"))
    assert row["clean"], row  # the run of a config that did not train a stage reused it


def test_a_second_visualize_into_a_live_run_dir_is_refused(fault_inputs, tmp_path):
    row = shared_run_dir(fault_inputs, tmp_path)
    assert row["clean"], row


def test_a_killed_ddp_rank_ends_the_job_and_it_resumes_with_no_frame_lost(fault_inputs, tmp_path):
    # Rank 0, the process the user started: the rank it launched must not wait for it forever.
    row = ddp_rank_kill(fault_inputs, tmp_path / "run", victim=0, delay=1.0)
    assert row["killed"] and row["recovered"], row
    assert (row["frames_lost"], row["frames_duplicated"], row["truncated"]) == (0, 0, 0), row
