"""Sweeps and scale: DDP on 2 CPU processes, Hydra launchers and sweepers, the caffenet preset."""

import json
import os
import subprocess
import sys

from featvis.checkpoints import read_checkpoint

from .conftest import ROOT, SMALL_PRIOR

# Two gloo processes on the CPU, a few steps each.
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
       "trainer.enable_progress_bar=false", "image_size=32", "data.train_size=128", "data.val_size=64",
       "data.batch_size=32"]
SMALL_NET = ["model.fc6_dim=64", "model.fc7_dim=64", "model.channels=[8,16,16,16,16]"]


def run_script(script, cwd, *args, wandb_mode="disabled", timeout=300):
    env = {**os.environ, "WANDB_MODE": wandb_mode, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def only_dirs(path):
    return sorted(p.name for p in path.iterdir() if p.is_dir())


# -- DDP ----------------------------------------------------------------------------------------
def test_ddp_classifier_with_feature_evolution_two_processes(tmp_path, small_priors):
    """Both ranks train and synthesize their share of the units; rank zero alone writes, in one run dir."""
    generator = small_priors["generator"][1]["last_checkpoint"]
    evolution = "callbacks.feature_evolution"
    proc = run_script("train.py", tmp_path, "task=classifier", *DDP, *SMALL_NET, "logger=wandb",
                      "callbacks=evolution", f"{evolution}.generator_ckpt={generator}", f"{evolution}.steps=2",
                      f"{evolution}.log_frames=2", f"{evolution}.units=[conv1:0,conv3:1,fc8:0,fc8:1,fc8:2]",
                      f"hydra.run.dir={tmp_path / 'run'}", wandb_mode="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert only_dirs(tmp_path) == ["run"]  # no second Hydra run dir from rank 1
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same dir
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one wandb run: rank zero's
    frames = json.loads((run / "evolution" / "evolution.json").read_text())["frames"]
    steps = sorted({f["step"] for f in frames})
    assert steps == [0, 1, 2]  # at start, then log-spaced over 2 steps (128 images / (2 x 32))
    for step in steps:  # units sharded over the two ranks and gathered: all five in every frame
        assert len({f["unit"] for f in frames if f["step"] == step}) == 5
        assert all((run / "evolution" / f["file"]).is_file() for f in frames if f["step"] == step)
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2


def test_ddp_generator_two_processes(tmp_path, small_classifier):
    """The GAN's manual G and D steps under DDP: no unused-parameter failure, EMA G saved."""
    encoder = small_classifier[1]["best_checkpoint"]
    proc = run_script("train.py", tmp_path, "task=generator", f"encoder.ckpt={encoder}", *SMALL_PRIOR, *DDP,
                      "logger=csv", "encoder.stats_images=128", "task.callbacks.samples.every_n_steps=1",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters that were not used" not in proc.stderr
    assert only_dirs(tmp_path) == ["run"]
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] >= 2  # 2 batches per rank: G and D optimizer steps
    assert checkpoint["featvis"]["kind"] == "generator"


def test_ddp_prior_multirun_two_jobs_two_processes_each(tmp_path, small_classifier):
    """A sweep of DDP jobs (one after another): each job's rank 1 runs that job, in that job's dir."""
    encoder = small_classifier[1]["best_checkpoint"]
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", tmp_path, "-m", "task=prior", f"encoder.ckpt={encoder}", *SMALL_PRIOR, *DDP,
                      "logger=csv", "encoder.stats_images=128", "dae.sigma=0.25,0.5", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert only_dirs(tmp_path) == ["sweep"]  # no outputs/ dir from a child's hydra.run.dir
    assert only_dirs(sweep) == ["0", "1"]
    for job, sigma in zip(("0", "1"), (0.25, 0.5)):
        assert (sweep / job / "train_ddp_process_1.log").is_file()
        checkpoint = read_checkpoint(sweep / job / "checkpoints" / "last.ckpt")
        assert checkpoint["featvis"]["dae"]["sigma"] == sigma
