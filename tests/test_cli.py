"""train.py as a user runs it: Hydra multirun, wandb offline runs, one-line errors."""

import os
import subprocess
import sys

import pytest

from featvis.checkpoints import read_checkpoint

from .conftest import ROOT

TINY = ["data.train_size=128", "data.val_size=32", "data.batch_size=64", "trainer.max_epochs=1"]


def _train(tmp_path, *args, wandb_mode="disabled"):
    env = {**os.environ, "WANDB_MODE": wandb_mode, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_multirun_runs_one_job_per_point_with_its_own_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _train(tmp_path, "-m", "task=classifier", "model.fc6_dim=256,512", *TINY,
                  f"hydra.sweep.dir={sweep}", wandb_mode="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    run_ids = set()
    for job, fc6 in zip(jobs, (256, 512)):
        record = read_checkpoint(job / "checkpoints" / "last.ckpt")["featvis"]
        assert record["net"]["fc6_dim"] == fc6
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2


@pytest.mark.parametrize("args, named", [
    (["data=imagefolder", "data.root=/no/such/folder"], "/no/such/folder/train"),
    (["model.fc6_dim=0"], "model.fc6_dim=0"),
    (["data.channel_order=[0,0,1]"], "channel_order=[0, 0, 1]"),
    (["model=caffenet", "image_size=227", "model.weights=/no/such/alexnet.pth"], "/no/such/alexnet.pth"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, args, named):
    tiny = [] if "data=imagefolder" in args else TINY
    proc = _train(tmp_path, "task=classifier", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", *tiny, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("featvis: error:")]
    assert len(errors) == 1 and named in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args, named", [
    (["nosuch_key=1"], "nosuch_key is not a key of the config"),
    (["model=nosuch"], "model=nosuch is not a config option; expected one of alexnet_mini, caffenet"),
    (["hydra/launcher=nosuch"], "hydra/launcher=nosuch is not a config option"),
    (["model.fc6_dim=[1"], "model.fc6_dim=[1 does not parse"),
    (["-m", "model=alexnet_mini,nosuch"], "model=nosuch is not a config option"),  # any point of a sweep
    (["--cfg", "job", "nosuch_key=1"], "nosuch_key is not a key of the config"),
])
def test_hydras_own_errors_are_one_line_and_exit_2(tmp_path, args, named):
    """Hydra's errors, raised before the job, come out as featvis's one line: no job output, no traceback."""
    proc = _train(tmp_path, *args, "task=classifier", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvis: error:") and named in lines[0], proc.stderr[-2000:]
    assert "expected" in lines[0]
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob("sweep/*/.hydra"))  # a sweep stops before its first job


def test_unwritable_run_dir_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    for flags in ([f"hydra.run.dir={tmp_path / 'blocker' / 'run'}"],
                  ["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'blocker' / 'sweep'}"]):
        proc = _train(tmp_path, *flags, "task=classifier", "logger=none", *TINY)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{tmp_path / 'blocker'}/" in lines[0], proc.stderr[-2000:]
        assert lines[0].startswith("featvis: error:") and "expected a writable directory" in lines[0]


def test_hydra_flags_are_hydras(tmp_path):
    proc = _train(tmp_path, "--cfg", "job", "task=classifier")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fc6_dim" in proc.stdout and not list(tmp_path.iterdir())


def test_wandb_disabled_writes_no_run(tmp_path):
    """WANDB_MODE=disabled (what the tests set) over logger=wandb's offline default: no wandb folder at all."""
    run = tmp_path / "run"
    proc = _train(tmp_path, "task=classifier", "logger=wandb", *TINY, f"hydra.run.dir={run}", wandb_mode="disabled")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not list(run.rglob("*wandb*")) and not (tmp_path / "wandb").exists()
    # Each log line once: Hydra's handler prints Lightning's records, Lightning's own does not.
    assert proc.stdout.count("Seed set to 0") == 1 and "Seed set to 0" not in proc.stderr, proc.stderr[-2000:]
