"""The project's Hydra configs (conf/), composed from Python."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """conf/<name>.yaml composed with `overrides`, through the running Hydra app's search path
    when there is one (inside train.py or visualize.py), else through conf/."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)
