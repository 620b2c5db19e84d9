"""Sweeps and scale: DDP on 2 CPU processes, Hydra launchers and sweepers, the caffenet preset."""

import csv
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from featvis.checkpoints import read_checkpoint
from featvis.summary import summarize

from .conftest import CONF, ROOT, SMALL_PRIOR

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
    losses = {}
    for job, sigma in zip(("0", "1"), (0.25, 0.5)):
        assert (sweep / job / "train_ddp_process_1.log").is_file()
        checkpoint = read_checkpoint(sweep / job / "checkpoints" / "last.ckpt")
        assert checkpoint["featvis"]["dae"]["sigma"] == sigma
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["monitor"] == "val/loss" and metrics["value"] == metrics["metrics"]["val/loss"]
        losses[job] = metrics["value"]
    # The summary of a train.py sweep: sorted by task.monitor in its direction (val/loss: lowest first).
    result = summarize(sweep)
    assert result["header"][:4] == ["rank", "job", "dae.sigma", "val/loss"]
    assert [row[1] for row in result["cells"]] == sorted(losses, key=losses.get)


# -- sweeps of the sampler ----------------------------------------------------------------------
def _visualize_args(small_classifier, small_priors, small_judge):
    return ["method=ppgn", f"target.ckpt={small_classifier[1]['best_checkpoint']}",
            f"generator.ckpt={small_priors['generator'][1]['last_checkpoint']}",
            f"prior.ckpt={small_priors['prior'][1]['last_checkpoint']}",
            f"judge.ckpt={small_judge[1]['best_checkpoint']}", "units=[0,4,8]", "seeds=2", "steps=8",
            "gif=false", "evaluation.real_images=64", "device=cpu"]


def test_joblib_sweep_of_the_sampler_and_its_summary(tmp_path, small_classifier, small_priors, small_judge):
    """4 points in parallel (joblib): each its own dir, metrics.json and wandb run; one table, one sheet."""
    sweep = tmp_path / "sweep"
    proc = run_script("visualize.py", tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      *_visualize_args(small_classifier, small_priors, small_judge), "logger=wandb",
                      "method.eps1=1,0.1", "method.eps2=1e-5,0.1", f"hydra.sweep.dir={sweep}", wandb_mode="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JoblibLauncher" in (sweep / "multirun.yaml").read_text()
    assert only_dirs(sweep) == ["0", "1", "2", "3"]
    values, points = {}, set()
    for job in only_dirs(sweep):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        figures = metrics["sweep"]["figures"]
        assert metrics["sweep"]["terms"] == ["judge_transfer", "diversity"]
        assert metrics["sweep"]["objective"] == pytest.approx(figures["judge_transfer"] * figures["diversity"])
        values[job] = metrics["sweep"]["objective"]
        points.add((metrics["settings"]["eps1"], metrics["settings"]["eps2"]))
        assert len(list((sweep / job / "wandb").glob("offline-run-*"))) == 1
    assert points == {(1.0, 1e-5), (1.0, 0.1), (0.1, 1e-5), (0.1, 0.1)}

    proc = subprocess.run([sys.executable, "-m", "featvis.summary", str(sweep)], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (sweep / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| rank | job | method.eps1 | method.eps2 | judge_transfer x diversity |")
    assert lines[0] in proc.stdout
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "complete" for r in rows)
    ordered = [values[r["job"]] for r in rows]
    assert ordered == sorted(ordered, reverse=True)  # best first (sweep.direction: maximize)
    sheet = Image.open(sweep / "contact_sheet.png")
    grid = Image.open(sweep / "0" / "grid.png")
    assert sheet.width > grid.width and sheet.height >= 4 * grid.height  # one row per sweep point


def test_optuna_search_of_ppgn_weights(tmp_path, small_classifier, small_priors, small_judge):
    """hparams_search=ppgn_eps: hydra-optuna-sweeper maximizes what each job returns."""
    sweep = tmp_path / "sweep"
    proc = run_script("visualize.py", tmp_path, "-m", "hparams_search=ppgn_eps", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.sampler.n_startup_trials=1",
                      *_visualize_args(small_classifier, small_priors, small_judge), f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    returned = {job: json.loads((sweep / job / "metrics.json").read_text())["sweep"]["objective"]
                for job in only_dirs(sweep)}
    assert len(returned) == 2
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(returned.values()))
    assert set(best.best_params) == {"method.eps1", "method.eps2", "method.eps3"}


def test_optuna_search_without_its_figures_is_a_one_line_error(tmp_path, small_classifier, small_priors,
                                                               small_judge):
    args = [a for a in _visualize_args(small_classifier, small_priors, small_judge) if not a.startswith("judge.")]
    proc = run_script("visualize.py", tmp_path, "-m", "hparams_search=ppgn_eps", "hydra.sweeper.n_trials=1",
                      *args, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("featvis: error:")]
    assert len(errors) == 1 and "needs judge.ckpt" in errors[0], proc.stderr[-2000:]
    assert not list((tmp_path / "sweep").rglob("metrics.json"))


def test_summary_of_a_missing_dir_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "featvis.summary", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("featvis: error:") and len(proc.stderr.strip().splitlines()) == 1


# -- the SLURM launcher (composed and rendered; no cluster here) ----------------------------------
def test_slurm_launcher_composes_one_task_per_device_and_lightning_requeue(tmp_path, monkeypatch):
    import signal

    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["task=generator", "hydra/launcher=slurm", "trainer=ddp",
                                           "trainer.devices=4", "trainer.num_nodes=2",
                                           f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.num_nodes == 2
    assert cfg.trainer.strategy.find_unused_parameters is True  # the GAN's alternating steps
    # Render the sbatch script as hydra-submitit-launcher would (a stand-in srun: no cluster here).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    launcher.pop("_target_")
    executor = submitit.AutoExecutor(folder=launcher.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=launcher.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()})
    script = executor._executor._make_submission_file_text("python -m featvis", "uid")
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=240"):
        assert f"#SBATCH {flag}" in script
    # One requeue mechanism: SLURM signals Lightning's SLURMEnvironment (USR1), not submitit (USR2).
    signals = [line for line in script.splitlines() if line.startswith("#SBATCH --signal=")]
    assert signals == ["#SBATCH --signal=USR1@120"]
    assert SLURMEnvironment().requeue_signal == signal.SIGUSR1 and SLURMEnvironment().auto_requeue
    assert launcher["additional_parameters"]["signal"] == f"USR1@{launcher['signal_delay_s']}"
