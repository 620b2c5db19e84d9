import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small and fast: one short epoch, no experiment logger, a few hundred shapes.
FAST = ["trainer.max_epochs=1", "logger=none"]
FAST_SHAPES = ["data.train_size=256", "data.val_size=64", "data.batch_size=64"]


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> the composed config, writing under tmp_path."""

    def _compose(*overrides, fast=True):
        other_data = any((o.startswith("data=") and o != "data=shapes")
                         or (o.startswith("experiment=") and o != "experiment=tiny") for o in overrides)
        speedups = [*FAST, *([] if other_data else FAST_SHAPES)] if fast else []
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=[f"output_dir={tmp_path}", *default_task(overrides), *speedups,
                                                *overrides])

    return _compose


def default_task(overrides):
    """Tests train one task at a time: the classifier unless they name one (the default is the pipeline)."""
    return [] if any(o.startswith("task=") for o in overrides) else ["task=classifier"]


def compose_in(out, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"output_dir={out}", *default_task(overrides), *overrides])


# A 32 px classifier that the training and prior tests share (about 10 s to train).
SMALL_CLASSIFIER = ["logger=csv", "image_size=32", "data.train_size=1500", "data.val_size=300",
                    "data.batch_size=50", "trainer.max_epochs=5", "model.fc6_dim=128",
                    "model.channels=[16,32,48,48,32]", "model.fc7_dim=128", "model.dropout=0.2"]


@pytest.fixture(scope="session")
def small_classifier(tmp_path_factory):
    """(config, result) of one short classifier run on 1500 shapes at 32 px."""
    from featvis.jobs.train import train

    cfg = compose_in(tmp_path_factory.mktemp("classifier"), *SMALL_CLASSIFIER)
    return cfg, train(cfg)


# Priors on the small classifier: G at 32 px (3 up-stages) and a small DAE; one short epoch each.
SMALL_PRIOR = ["logger=csv", "image_size=32", "data.train_size=256", "data.val_size=64",
               "data.batch_size=64", "trainer.max_epochs=1",
               "generator.net.stages=[[32,0],[16,0],[8,0]]", "generator.net.fc_dims=[128]",
               "generator.net.start_channels=32", "generator.discriminator.channels=[8,16,32]",
               "dae.hidden=[64,32,64]"]
SAMPLES_EVERY_2_STEPS = ["task.callbacks.samples.every_n_steps=2"]


@pytest.fixture(scope="session")
def small_priors(small_classifier, tmp_path_factory):
    """{"generator": (cfg, result), "prior": (cfg, result)} trained on the small classifier."""
    from featvis.jobs.train import train

    encoder = small_classifier[1]["best_checkpoint"]
    runs = {}
    for task in ("generator", "prior"):
        # the generator with every loss term on, the spectral one included
        extra = [*SAMPLES_EVERY_2_STEPS, "task.module.loss_weights.spectral=0.05"] if task == "generator" else []
        cfg = compose_in(tmp_path_factory.mktemp(task), f"task={task}", f"encoder.ckpt={encoder}",
                         *SMALL_PRIOR, *extra)
        runs[task] = (cfg, train(cfg))
    return runs


@pytest.fixture(scope="session")
def small_judge(tmp_path_factory):
    """An independent 32 px classifier (other seed, other fc6 width) to judge syntheses."""
    from featvis.jobs.train import train

    cfg = compose_in(tmp_path_factory.mktemp("judge"), *SMALL_CLASSIFIER, "seed=1", "model.fc6_dim=96")
    return cfg, train(cfg)


@pytest.fixture(scope="session")
def fault_inputs(small_classifier, small_priors, tmp_path_factory):
    """The small checkpoints and the broken inputs of tests/faults.py (placeholder -> path)."""
    from tests.faults import broken_inputs

    checkpoints = {"classifier": small_classifier[1]["best_checkpoint"],
                   "generator": small_priors["generator"][1]["last_checkpoint"],
                   "prior": small_priors["prior"][1]["last_checkpoint"]}
    return broken_inputs(tmp_path_factory.mktemp("inputs"), checkpoints)


def chosen_device() -> str:
    """Where the `gpu` tests run: FEATVIS_TEST_DEVICE, CUDA unless it names another device."""
    return os.environ.get("FEATVIS_TEST_DEVICE", "cuda")


@pytest.fixture(scope="session")
def device():
    return chosen_device()


def pytest_collection_modifyitems(config, items):
    """Without CUDA the `gpu` tests are skipped; FEATVIS_TEST_DEVICE=cpu runs them on the CPU instead."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests or not chosen_device().startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available")
    for item in gpu_tests:
        item.add_marker(skip)
