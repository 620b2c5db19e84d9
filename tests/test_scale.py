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
from featvis.tools.summary import summarize

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
                      "callbacks=evolution", f"{evolution}.generator.ckpt={generator}", f"{evolution}.steps=2",
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


def test_prior_multirun_two_jobs_and_its_summary(tmp_path, small_classifier):
    """A local sweep of prior jobs (one process each): each job in its own dir, one summary sorted by val/loss."""
    encoder = small_classifier[1]["best_checkpoint"]
    sweep = tmp_path / "sweep"
    one_process = [arg for arg in DDP if arg.split("=")[0] not in ("trainer", "trainer.devices")]
    proc = run_script("train.py", tmp_path, "-m", "task=prior", f"encoder.ckpt={encoder}", *SMALL_PRIOR, *one_process,
                      "logger=csv", "encoder.stats_images=128", "dae.sigma=0.25,0.5", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert only_dirs(tmp_path) == ["sweep"]
    assert only_dirs(sweep) == ["0", "1"]
    losses = {}
    for job, sigma in zip(("0", "1"), (0.25, 0.5)):
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
                      "method.step.eps1=1,0.1", "method.step.eps2=1e-5,0.1", f"hydra.sweep.dir={sweep}", wandb_mode="offline")
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

    proc = subprocess.run([sys.executable, "-m", "featvis.tools.summary", str(sweep)], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (sweep / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| rank | job | method.step.eps1 | method.step.eps2 | judge_transfer x diversity |")
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
    assert set(best.best_params) == {"method.step.eps1", "method.step.eps2", "method.step.eps3"}


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
    proc = subprocess.run([sys.executable, "-m", "featvis.tools.summary", str(tmp_path / "nothing")],
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


# -- the caffenet preset ------------------------------------------------------------------------
def conv_params(c_in, c_out, k, groups=1):
    return c_out * (c_in // groups) * k * k + c_out


def linear_params(d_in, d_out):
    return d_in * d_out + d_out


def alexnet_params(channels, kernels, groups, fc=(9216, 4096, 4096, 1000)):
    ins = [3, *channels[:-1]]
    convs = sum(conv_params(i, o, k, g) for i, o, k, g in zip(ins, channels, kernels, groups))
    return convs + sum(linear_params(a, b) for a, b in zip(fc[:-1], fc[1:]))


def deepsim_generator_params():
    """DeePSiM's fc6 generator: defc7, defc6, defc5 (4096 each), then deconv5, conv5_1, deconv4,
    conv4_1, deconv3, conv3_1, deconv2, deconv1, deconv0 (4x4 up-convolutions, 3x3 convolutions)."""
    fc = 3 * linear_params(4096, 4096)
    layers = [(256, 256, 4), (256, 512, 3), (512, 256, 4), (256, 256, 3), (256, 128, 4), (128, 128, 3),
              (128, 64, 4), (64, 32, 4), (32, 3, 4)]
    return fc + sum(conv_params(i, o, k) for i, o, k in layers)


def _caffenet_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=caffenet", "data.root=/unused", *overrides])


def test_caffenet_preset_shapes_and_parameter_counts():
    import torch
    from hydra.utils import instantiate

    from featvis.nets import activations

    cfg = _caffenet_cfg("task=generator")
    assert cfg.image_size == 227 and cfg.data._target_.endswith("ImageFolderDataModule") and cfg.data.resize == 256
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    net = instantiate(cfg.model, num_classes=1000).eval()
    # torchvision's AlexNet widths (the weights it loads): the known 61,100,840.
    assert count(net) == alexnet_params([64, 192, 384, 256, 256], [11, 5, 3, 3, 3], [1] * 5) == 61_100_840
    with torch.no_grad():
        acts = activations(net, torch.rand(1, 3, 227, 227), ["conv1", "conv5", "pool5", "fc6", "fc7", "fc8"])
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "conv1": (1, 64, 56, 56), "conv5": (1, 256, 13, 13), "pool5": (1, 256, 6, 6), "fc6": (1, 4096),
        "fc7": (1, 4096), "fc8": (1, 1000)}
    # Caffe's own CaffeNet (96-256-384-384-256, two groups in conv2/4/5, no conv1 padding): 60,965,224.
    caffe = _caffenet_cfg("task=classifier", "model.channels=[96,256,384,384,256]", "model.groups=[1,2,1,2,2]",
                          "model.paddings=[0,2,1,1,1]")
    caffe_net = instantiate(caffe.model, num_classes=1000)
    assert count(caffe_net) == alexnet_params([96, 256, 384, 384, 256], [11, 5, 3, 3, 3], [1, 2, 1, 2, 2]) \
        == 60_965_224
    del caffe_net

    generator = instantiate(cfg.generator.net, code_dim=4096)
    assert count(generator) == deepsim_generator_params() == 56_097_891
    assert len([m for m in generator.deconv if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]) == 9
    with torch.no_grad():
        assert generator(torch.rand(2, 4096)).shape == (2, 3, 256, 256)
    discriminator = instantiate(cfg.generator.discriminator, image_size=227, code_dim=4096)
    image_branch = sum(conv_params(i, o, k) for i, o, k in
                       [(3, 32, 7), (32, 64, 5), (64, 128, 3), (128, 256, 3), (256, 256, 3)])
    code_branch = linear_params(4096, 1024) + linear_params(1024, 512)
    assert count(discriminator) == image_branch + code_branch + linear_params(256 + 512, 512) + linear_params(512, 1)
    with torch.no_grad():
        assert discriminator(torch.rand(2, 3, 227, 227), torch.rand(2, 4096)).shape == (2,)
    dae = instantiate(cfg.dae, code_dim=4096)  # PPGN-h: 4096-2048-1024-500-1024-2048-4096
    sizes = [4096, 2048, 1024, 500, 1024, 2048, 4096]
    assert count(dae) == sum(linear_params(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    assert dae(torch.rand(2, 4096)).shape == (2, 4096)


def _jpeg_folder(root, classes=("cat", "dog"), per_split={"train": 2, "val": 1}):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, count in per_split.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):  # ImageNet-like: JPEG, not square, larger than 256
                pixels = rng.integers(0, 255, (300, 260 + 40 * c, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
    return root


def test_caffenet_one_training_step_and_one_dgn_am_step(tmp_path):
    import torch
    from hydra.utils import instantiate

    from featvis.nets import CodeStatistics
    from featvis.jobs.train import train
    from featvis.synthesis.objectives import ObjectiveBatch, Term
    from featvis.synthesis.sampler import Sampler, SamplerSettings
    from featvis.synthesis.priors import ClipCodes, Decay
    from featvis.synthesis.spaces import CodeSpace

    root = _jpeg_folder(tmp_path / "imagenet")
    cfg = _caffenet_cfg("task=classifier", f"data.root={root}", f"output_dir={tmp_path / 'run'}", "logger=none",
                        "callbacks=none", "data.batch_size=2", "data.num_workers=0", "+trainer.fast_dev_run=1",
                        "trainer.enable_progress_bar=false")
    result = train(cfg)  # one step on 227 px crops of the folder's JPEGs, one validation batch
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))

    # One batched DGN-AM step: DeePSiM G (256 px, cropped to 227) into the 1000-way CaffeNet.
    torch.manual_seed(0)
    gen_cfg = _caffenet_cfg("task=generator")
    target = instantiate(gen_cfg.model, num_classes=1000).eval()
    generator = instantiate(gen_cfg.generator.net, code_dim=4096).eval()
    stats = CodeStatistics(4096).fit(torch.rand(256, 4096).relu_() * 2)
    units = [1, 2]
    sampler = Sampler(target, ObjectiveBatch([[Term("fc8", u)] for u in units], {"fc8": 1000}),
                      SamplerSettings(steps=1, lr=1.0, lr_end=1.0, normalize_gradient=True),
                      space=CodeSpace(generator, stats), operators=[ClipCodes(stats.quantile(0.99)), Decay(0.99)])
    out = sampler.run(stats.sample(len(units), torch.Generator().manual_seed(0)))
    assert out.last.shape == (2, 3, 227, 227)
    assert torch.isfinite(out.last_value).all()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_ddp_in_a_local_multirun_is_a_one_line_error(tmp_path, launcher):
    """Lightning starts DDP ranks by re-running the command line, which in a sweep is the whole sweep:
    refused before any job output (Hydra's own records aside); DDP sweeps run on SLURM."""
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", tmp_path, "-m", "task=classifier", "trainer=ddp", "trainer.accelerator=cpu",
                      f"hydra/launcher={launcher}", "seed=0,1", "logger=wandb", f"hydra.sweep.dir={sweep}",
                      wandb_mode="offline")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("featvis: error:")]
    assert errors and len(set(errors)) == 1, proc.stderr[-2000:]
    assert f"trainer=ddp with trainer.devices=2 in a multirun under hydra/launcher={launcher}" in errors[0]
    assert "hydra/launcher=slurm" in errors[0]
    assert "Traceback" not in proc.stderr
    written = [p.relative_to(sweep) for p in sweep.rglob("*") if p.is_file()]
    assert all(p.name == "multirun.yaml" or ".hydra" in p.parts or p.suffix == ".log" for p in written), written


@pytest.mark.parametrize("config, overrides", [
    ("visualize", ["hparams_search=ppgn_eps", "method=ppgn"]),
    ("config", ["hparams_search=generator_lr", "task=generator"]),
])
def test_hparams_search_configs_compose_to_optuna_over_existing_keys(config, overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    for key in sweeper.params:  # every searched key is a key of the job's config
        assert OmegaConf.select(cfg, key) is not None, key
    # train.py returns task.monitor: the direction must match its mode (visualize.py: its sweep's)
    mode = cfg.task.monitor_mode if config == "config" else {"maximize": "max"}[cfg.sweep.direction]
    assert sweeper.direction == {"max": "maximize", "min": "minimize"}[mode]
