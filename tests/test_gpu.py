"""Every path on the device, a few steps each: the training tasks, DDP, each synthesis method, the
evaluation, feature evolution and the speed switches (`pytest -m gpu`).

Skipped without CUDA; FEATVIS_TEST_DEVICE=cpu runs the same tests on the CPU, to check their logic.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from featvis.checkpoints import load_prior, read_checkpoint
from featvis.jobs.train import train
from featvis.synthesis.sampler import Sampler
from featvis.jobs.visualize import visualize

from .conftest import CONF, ROOT, SMALL_PRIOR, compose_in

pytestmark = pytest.mark.gpu

# Three batches of 64 images at 32 px, one epoch: a few steps on the device, not a training run.
TINY = ["logger=csv", "image_size=32", "data.train_size=192", "data.val_size=64", "data.batch_size=64",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
TINY_STEPS = 3
SMALL_NET = ["model.fc6_dim=64", "model.fc7_dim=64", "model.channels=[8,16,16,16,16]"]
PRIOR_ONLY = [o for o in SMALL_PRIOR if not o.startswith(("data.", "trainer.", "logger="))]


def kind(device: str) -> str:
    return torch.device(device).type


def on(device: str) -> list[str]:
    """Trainer overrides for one process on `device`."""
    index = torch.device(device).index
    return [f"trainer.accelerator={kind(device)}", f"trainer.devices={1 if index is None else [index]}"]


class DeviceProbe(L.Callback):
    """Writes to `path` where training ran: the devices of the module's parameters and of the batches
    at every step, the strategy and the process group's backend.  A file, so that a train.py
    subprocess can report too."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.parameters: set[str] = set()
        self.batches: set[str] = set()
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.parameters |= {p.device.type for p in pl_module.parameters()}
        self.batches.add(batch[0].device.type)
        self.steps += 1

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
            self.path.write_text(json.dumps({
                "parameters": sorted(self.parameters), "batches": sorted(self.batches), "steps": self.steps,
                "strategy": type(trainer.strategy).__name__, "backend": backend,
                "world_size": trainer.world_size}))


def probe(path: Path) -> list[str]:
    return [f"+callbacks.device_probe._target_={__name__}.DeviceProbe", f"+callbacks.device_probe.path={path}"]


def train_on(device: str, out: Path, *overrides: str) -> tuple[dict, dict]:
    """train(cfg) on `device`; returns its result and what the probe saw."""
    result = train(compose_in(out, *on(device), *probe(out / "probe.json"), *overrides))
    return result, json.loads((out / "probe.json").read_text())


def assert_finite_state(checkpoint_path: str) -> dict:
    checkpoint = read_checkpoint(checkpoint_path)
    state = checkpoint["state_dict"]
    assert state and all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    return checkpoint


# -- training -----------------------------------------------------------------------------------
def test_classifier_trains_on_the_device(device, tmp_path):
    result, seen = train_on(device, tmp_path, *TINY, *SMALL_NET)
    assert seen["parameters"] == seen["batches"] == [kind(device)] and seen["steps"] == TINY_STEPS
    checkpoint = assert_finite_state(result["last_checkpoint"])
    assert checkpoint["global_step"] == TINY_STEPS and checkpoint["featvis"]["kind"] == "classifier"
    assert all(math.isfinite(v) for v in result["metrics"].values()) and "val/acc" in result["metrics"]
    assert json.loads((tmp_path / "metrics.json").read_text())["value"] == result["metrics"]["val/acc"]


def test_generator_trains_on_the_device(device, small_classifier, tmp_path):
    encoder = small_classifier[1]["best_checkpoint"]
    result, seen = train_on(device, tmp_path, "task=generator", f"encoder.ckpt={encoder}", *PRIOR_ONLY, *TINY,
                            "encoder.stats_images=128", "task.callbacks.samples.every_n_steps=1")
    # The frozen encoder and the EMA copy of G too: everything the module holds is on the device.
    assert seen["parameters"] == seen["batches"] == [kind(device)] and seen["steps"] == TINY_STEPS
    checkpoint = assert_finite_state(result["last_checkpoint"])
    assert checkpoint["featvis"]["kind"] == "generator" and checkpoint["global_step"] >= TINY_STEPS
    assert any(k.startswith("generator_ema.") for k in checkpoint["state_dict"])
    assert 0 <= result["metrics"]["val/agreement"] <= 1
    assert all(math.isfinite(v) for v in result["metrics"].values())
    # The samples callback draws on the device and saves on the host: a grid per step and one at the end.
    assert len(list((tmp_path / "samples").glob("step*.png"))) >= TINY_STEPS


@pytest.mark.parametrize("precompute", [True, False], ids=["codes", "images"])
def test_prior_trains_on_the_device(device, small_classifier, tmp_path, precompute):
    """The DAE on precomputed codes, or on codes the encoder computes on the device every batch."""
    encoder = small_classifier[1]["best_checkpoint"]
    result, seen = train_on(device, tmp_path, "task=prior", f"encoder.ckpt={encoder}", *PRIOR_ONLY, *TINY,
                            "encoder.stats_images=128", f"task.precompute_codes={precompute}",
                            "task.batch_size=64")
    assert seen["parameters"] == seen["batches"] == [kind(device)] and seen["steps"] == TINY_STEPS
    checkpoint = assert_finite_state(result["last_checkpoint"])
    assert checkpoint["featvis"]["kind"] == "prior" and math.isfinite(result["metrics"]["val/loss"])
    dae, stats, _ = load_prior(result["last_checkpoint"])
    assert torch.isfinite(dae.score(stats.sample(4))).all()


def run_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ddp_one_process_on_the_device(device, tmp_path):
    """trainer=ddp with one device: a process group of one (NCCL on CUDA, gloo on the CPU).

    A train.py subprocess, as users run it: the process group and the launch variables it leaves
    behind stay out of the test process."""
    run = tmp_path / "run"
    proc = run_train(tmp_path, "task=classifier", "trainer=ddp", *on(device), *TINY, *SMALL_NET,
                     *probe(run / "probe.json"), f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads((run / "probe.json").read_text())
    assert seen["strategy"] == "DDPStrategy" and seen["world_size"] == 1
    assert seen["backend"] == ("nccl" if kind(device) == "cuda" else "gloo")
    assert seen["parameters"] == seen["batches"] == [kind(device)] and seen["steps"] == TINY_STEPS
    assert assert_finite_state(run / "checkpoints" / "last.ckpt")["global_step"] == TINY_STEPS
    assert json.loads((run / "metrics.json").read_text())["task"] == "classifier"


# -- synthesis ----------------------------------------------------------------------------------
def record_sampler_runs(monkeypatch) -> list[dict]:
    """Each Sampler.run from now on: the devices of its start and of the target's weights, the sampler
    and its result."""
    runs = []
    run = Sampler.run

    def recording(self, z0, *args, **kwargs):
        result = run(self, z0, *args, **kwargs)
        runs.append({"start": z0.device.type, "target": next(self.target.parameters()).device.type,
                     "sampler": self, "result": result})
        return result

    monkeypatch.setattr(Sampler, "run", recording)
    return runs


@pytest.fixture
def sampler_runs(monkeypatch):
    return record_sampler_runs(monkeypatch)


def assert_ran_on(device: str, runs: list[dict]) -> None:
    """The sampler ran on `device` and handed back finite tensors on the host."""
    assert runs, "the sampler never ran"
    for run in runs:
        assert run["start"] == run["target"] == kind(device)
        result = run["result"]
        tensors = {name: getattr(result, name) for name in
                   ("last", "best", "last_value", "best_value", "best_step", "last_z", "best_z")}
        tensors.update({f"frame {i}": frame for i, frame in enumerate(result.frames)})
        for name, tensor in tensors.items():
            assert tensor.device.type == "cpu", name
            assert torch.isfinite(tensor).all(), name


def visualize_cfg(out: Path, device: str, small_classifier, small_priors, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("visualize", overrides=[
            f"output_dir={out}", f"device={device}", f"target.ckpt={small_classifier[1]['best_checkpoint']}",
            f"generator.ckpt={small_priors['generator'][1]['last_checkpoint']}",
            f"prior.ckpt={small_priors['prior'][1]['last_checkpoint']}", "units=[0,'1+2']", "seeds=2",
            "steps=4", "record_every=2", "evaluation.real_images=0", *overrides])


def assert_complete_metrics(out: Path, summary: dict, units: int, seeds: int) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert set(metrics) >= {"method", "settings", "results", "evaluation", "sweep"}
    assert len(metrics["results"]) == units * seeds
    for record in metrics["results"]:
        figures = [record[kept][key] for kept in ("last", "best") for key in ("objective", "activation", "probability")]
        assert all(math.isfinite(v) for v in figures), record
        assert record["best"]["objective"] >= record["last"]["objective"]
        assert all((out / f).is_file() for f in record["files"].values())
    assert (out / "grid.png").is_file()
    assert not list(out.rglob(".*partial*"))
    return metrics


# pixel: jitter, scaling and rotation, whose random draws once crashed beside a CUDA generator;
# dgn_am: the blur on what the target reads, through G.
METHODS = {"pixel_noprior": [], "pixel": ["method.step.jitter=2", "method.step.scale=0.05", "method.step.rotate=5.0"],
           "pixel_fft": [], "pixel_maco": [], "dgn_am": ["method.step.target_blur=1.0"], "ppgn": []}


@pytest.mark.parametrize("method", list(METHODS))
def test_visualize_each_method_on_the_device(method, device, small_classifier, small_priors, tmp_path,
                                            sampler_runs):
    cfg = visualize_cfg(tmp_path, device, small_classifier, small_priors, f"method={method}", *METHODS[method])
    metrics = assert_complete_metrics(tmp_path, visualize(cfg), units=2, seeds=2)
    assert metrics["method"] == method
    if method == "pixel":
        settings = metrics["settings"]
        assert (settings["jitter"], settings["scale"], settings["rotate"]) == (2, 0.05, 5.0)
    if method == "dgn_am":
        assert metrics["settings"]["target_blur"] == 1.0
    assert len(list((tmp_path / "gifs").glob("*.gif"))) == 2
    assert_ran_on(device, sampler_runs)
    assert len(sampler_runs[0]["result"].frames) == 3  # steps 0, 2 and the last


def test_visualize_evaluation_with_a_judge_on_the_device(device, small_classifier, small_priors, small_judge,
                                                         tmp_path, sampler_runs):
    """The faithfulness figures: judge transfer, diversity, KID against real images."""
    cfg = visualize_cfg(tmp_path, device, small_classifier, small_priors, "method=dgn_am", "units=[0,4]",
                        f"judge.ckpt={small_judge[1]['best_checkpoint']}", "evaluation.real_images=32", "gif=false")
    metrics = assert_complete_metrics(tmp_path, visualize(cfg), units=2, seeds=2)
    evaluation = metrics["evaluation"]
    assert [row["unit"] for row in evaluation["per_unit"]] == ["0 red circle", "4 green square"]
    assert 0 <= evaluation["judge_transfer"] <= 1 and 0 <= evaluation["beats_real_top1"] <= 1
    assert evaluation["diversity"] >= 0 and math.isfinite(evaluation["kid_mean"])
    assert all(math.isfinite(row["real_top1"]) for row in evaluation["per_unit"])
    assert metrics["sweep"]["objective"] == pytest.approx(evaluation["judge_transfer"] * evaluation["diversity"])
    assert_ran_on(device, sampler_runs)


def test_dgn_am_speed_switches_on_the_device(device, small_classifier, small_priors, tmp_path, sampler_runs):
    """bf16 autocast and channels_last: a finite objective that the steps raise, float32 images back."""
    cfg = visualize_cfg(tmp_path, device, small_classifier, small_priors, "method=dgn_am", "steps=6", "gif=false",
                        "performance.autocast=true", "performance.channels_last=true")
    assert_complete_metrics(tmp_path, visualize(cfg), units=2, seeds=2)
    assert_ran_on(device, sampler_runs)
    sampler, result = sampler_runs[0]["sampler"], sampler_runs[0]["result"]
    assert sampler.autocast and result.last.dtype == result.best.dtype == torch.float32
    convolutions = [p for p in sampler.taps.parameters() if p.ndim == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert (result.best_step > 0).any(), "no step raised the objective"


# -- feature evolution --------------------------------------------------------------------------
EVOLUTION = "callbacks.feature_evolution"
EVOLUTION_UNITS = ["conv1.bn 0", "fc8 0 red circle"]  # conv units read before their ReLU


@pytest.fixture(scope="module")
def evolution_run(device, small_priors, small_judge, tmp_path_factory):
    """A classifier training on the device with the FeatureEvolution callback and a checkpoint every
    step: (run dir, result, what the probe saw, the callback's sampler runs)."""
    out = tmp_path_factory.mktemp("evolution")
    with pytest.MonkeyPatch.context() as monkeypatch:
        runs = record_sampler_runs(monkeypatch)
        result, seen = train_on(
            device, out, *TINY, *SMALL_NET, "callbacks=evolution", "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.model_checkpoint.monitor=null", "+callbacks.model_checkpoint.every_n_train_steps=1",
            f"{EVOLUTION}.generator.ckpt={small_priors['generator'][1]['last_checkpoint']}",
            f"{EVOLUTION}.judge.ckpt={small_judge[1]['best_checkpoint']}", f"{EVOLUTION}.units=[conv1:0,fc8:0]",
            f"{EVOLUTION}.seeds=2", f"{EVOLUTION}.steps=2", f"{EVOLUTION}.log_frames=2",
            f"{EVOLUTION}.on_checkpoint=true")
    return out, result, seen, runs


def assert_evolution_folder(root: Path, steps: list[int]) -> dict:
    doc = json.loads((root / "evolution.json").read_text())
    assert doc["steps"] == steps and [u["label"] for u in doc["units"]] == EVOLUTION_UNITS
    assert len(doc["frames"]) == len(steps) * len(EVOLUTION_UNITS) * 2
    for frame in doc["frames"]:
        assert (root / frame["file"]).is_file() and (root / frame["top_file"]).is_file()
        assert math.isfinite(frame["activation"]) and 0 <= frame["probability"] <= 1
    assert (root / "index.html").is_file()
    return doc


def test_feature_evolution_callback_during_training_on_the_device(device, evolution_run):
    out, result, seen, runs = evolution_run
    assert seen["parameters"] == [kind(device)] and seen["steps"] == TINY_STEPS
    # Step 0, then every checkpoint (one per step).
    doc = assert_evolution_folder(out / "evolution", list(range(TINY_STEPS + 1)))
    assert all(("judge_correct" in f) == (f["layer"] == "fc8") for f in doc["frames"])
    assert len(runs) == TINY_STEPS + 1
    assert_ran_on(device, runs)
    state = read_checkpoint(result["last_checkpoint"])["callbacks"]["FeatureEvolution"]
    assert state["frames"] == doc["frames"] and len(state["z0"]) == len(EVOLUTION_UNITS) * 2


def test_visualize_evolution_of_checkpoints_on_the_device(device, evolution_run, small_priors, tmp_path,
                                                         sampler_runs):
    out = evolution_run[0]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("visualize", overrides=[
            "mode=evolution", f"target.ckpt_dir={out / 'checkpoints'}", f"device={device}",
            f"generator.ckpt={small_priors['generator'][1]['last_checkpoint']}", "units=[conv1:0,fc8:0]",
            "pre_relu=true", "evaluation.real_images=64", "seeds=2", "steps=2", f"output_dir={tmp_path}"])
    summary = visualize(cfg)
    steps = list(range(1, TINY_STEPS + 1))
    assert summary["steps"] == steps and Path(summary["index"]).is_file()
    assert_evolution_folder(tmp_path / "evolution", steps)
    assert len(sampler_runs) == len(steps)
    assert_ran_on(device, sampler_runs)
