"""The project's Hydra configs, composed from Python.

They live in the top-level conf/ and ship as the package `featvis.conf` (pyproject.toml maps
one onto the other), so they are found through the package, in a wheel as in a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig

CONFIG_MODULE = "featvis.conf"
# Hydra's search-path form of the package (`@hydra.main(config_path=CONFIG_PATH)`).
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
# Where the installed configs are on disk (conf/ itself under an editable install).
CONFIG_DIR = Path(str(resources.files(CONFIG_MODULE)))


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """<name>.yaml of the packaged configs composed with `overrides`, through the running Hydra
    app's search path when there is one (inside train.py or visualize.py)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(name, overrides=overrides)
