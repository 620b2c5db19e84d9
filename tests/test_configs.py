"""Every option of every config group composes and instantiates."""

import pytest
from hydra.utils import instantiate
from lightning import Trainer
from PIL import Image

from featvis.data import ImageDataModule
from featvis.errors import ConfigError, DataError
from featvis.jobs.train import build_trainer

from .conftest import CONF


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert {"shapes", "imagefolder", "cifar10"} <= set(_options("data"))
    assert {"alexnet_mini", "caffenet"} <= set(_options("model"))
    assert {"wandb", "csv", "none"} <= set(_options("logger"))


@pytest.mark.parametrize("data", _options("data"))
def test_data_options_instantiate(compose_cfg, tmp_path, data):
    overrides = [f"data={data}"]
    if data == "imagefolder":
        for split in ("train", "val"):
            (tmp_path / "tree" / split / "a").mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "tree" / split / "a" / "x.png")
        overrides.append(f"data.root={tmp_path / 'tree'}")
    if data == "cifar10":  # no CIFAR-10 on disk: composing works, building names the root
        cfg = compose_cfg(*overrides, f"data.root={tmp_path}")
        with pytest.raises(Exception) as err:
            instantiate(cfg.data)
        assert isinstance(err.value.__cause__, DataError)
        return
    datamodule = instantiate(compose_cfg(*overrides).data)
    assert isinstance(datamodule, ImageDataModule) and datamodule.num_classes >= 1


@pytest.mark.parametrize("model, size", [("alexnet_mini", 64), ("caffenet", 227)])
def test_model_options_instantiate(compose_cfg, model, size):
    cfg = compose_cfg(f"model={model}", f"image_size={size}")
    net = instantiate(cfg.model, num_classes=7)
    assert net.spec["image_size"] == size and net.fc8.out_features == 7


@pytest.mark.parametrize("logger", _options("logger"))
@pytest.mark.parametrize("callbacks", _options("callbacks"))
def test_trainer_logger_callbacks_instantiate(compose_cfg, logger, callbacks):
    # FeatureEvolution needs its generator only when training starts
    needs = ["callbacks.feature_evolution.generator.ckpt=G.ckpt"] if callbacks == "evolution" else []
    trainer = build_trainer(compose_cfg(f"logger={logger}", f"callbacks={callbacks}", *needs))
    assert isinstance(trainer, Trainer)
    assert (len(trainer.loggers) > 0) == (logger != "none")
    writes_last = [c for c in trainer.checkpoint_callbacks if c.filename == "last" and c.monitor is None]
    assert len(writes_last) == (callbacks != "none")  # last.ckpt after every epoch


def test_a_step_budget_is_the_trainers_max_steps_validated_across_epochs(compose_cfg):
    trainer = build_trainer(compose_cfg("task=generator", "logger=none", "task.train_steps=2500", fast=False))
    # Lightning validates at val_check_interval's multiples, not at max_steps: whole intervals of 200
    assert (trainer.max_steps, trainer.max_epochs) == (2600, -1)
    assert (trainer.val_check_interval, trainer.check_val_every_n_epoch) == (200, None)
    explicit = build_trainer(compose_cfg("task=generator", "logger=none", "trainer.max_epochs=3", fast=False))
    assert (explicit.max_steps, explicit.max_epochs, explicit.check_val_every_n_epoch) == (-1, 3, 1)


def test_visualize_and_the_evolution_callback_spell_the_synthesis_keys_alike(compose_cfg, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from featvis.evolution import FeatureEvolution

    shared = OmegaConf.load(CONF / "synthesis" / "default.yaml")
    callback = compose_cfg("callbacks=evolution", "callbacks.feature_evolution.generator.ckpt=G.ckpt",
                           "callbacks.feature_evolution.judge.feature_layer=fc6").callbacks.feature_evolution
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        visualize = compose("visualize", overrides=[f"output_dir={tmp_path}", "generator.ckpt=G.ckpt"])
    for key, value in shared.items():
        assert OmegaConf.is_dict(value) == OmegaConf.is_dict(callback[key]) == OmegaConf.is_dict(visualize[key])
        if OmegaConf.is_dict(value):
            assert set(value) == set(callback[key]) == set(visualize[key]), key
    assert callback.generator.ckpt == visualize.generator.ckpt == "G.ckpt"
    recorder = instantiate(callback, method={"name": "dgn_am"}).recorder
    assert (recorder.spec.generator.ckpt, recorder.spec.judge.feature_layer, recorder.spec.seeds) == ("G.ckpt", "fc6", 1)
    # from Python a checkpoint may be given as its path alone
    assert FeatureEvolution(["fc8:0"], {"name": "dgn_am"}, generator="G.ckpt").recorder.spec.generator.ckpt == "G.ckpt"
    with pytest.raises(ConfigError, match=r"generator=3; expected a checkpoint path or a mapping \{ckpt: <checkpoint"):
        FeatureEvolution(["fc8:0"], {"name": "dgn_am"}, generator=3)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiment_presets_compose(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.image_size == cfg.data.image_size == cfg.model.image_size


def test_task_module_instantiates(compose_cfg):
    cfg = compose_cfg()
    net = instantiate(cfg.model, num_classes=15)
    module = instantiate(cfg.task.module, net=net, class_names=[str(i) for i in range(15)])
    assert module.net is net


@pytest.mark.parametrize("generator", _options("generator"))
def test_generator_options_instantiate(compose_cfg, generator):
    cfg = compose_cfg(f"generator={generator}")
    g = instantiate(cfg.generator.net, code_dim=64)
    d = instantiate(cfg.generator.discriminator, image_size=g.image_size, code_dim=64)
    assert g.spec["code_dim"] == 64 and d.spec["image_size"] == g.image_size


@pytest.mark.parametrize("dae", _options("dae"))
def test_dae_options_instantiate(compose_cfg, dae):
    assert instantiate(compose_cfg(f"dae={dae}").dae, code_dim=32).code_dim == 32


@pytest.mark.parametrize("task", _options("task"))
def test_task_options_compose(compose_cfg, task):
    cfg = compose_cfg(f"task={task}")
    assert cfg.task.name == task
    if task != "pipeline":  # the pipeline runs the other tasks
        assert cfg.task.module._target_.startswith("featvis.training.")
