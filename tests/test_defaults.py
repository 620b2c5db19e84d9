"""A Python user and a visualize.py/train.py user get the same behaviour: every default that is
declared both in Python and in a config agrees, and the method configs are built on one schema."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

import featvis
from featvis.configs import CONFIG_DIR
from featvis.errors import ConfigError
from featvis.synthesis.settings import MethodConfig, ObjectiveSettings, SamplerSettings, SynthesisSpec

# Groups whose files are alternatives (presets of one object), not its defaults: a preset sets
# other values than the Python defaults on purpose.
PRESET_GROUPS = ("dae", "generator", "encoder", "experiment", "model", "data", "hparams_search")


def _featvis_targets(node, path=""):
    """(path, block) of every block in a config whose _target_ is featvis's own."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).startswith("featvis."):
            yield path, node
        for key, value in node.items():
            yield from _featvis_targets(value, f"{path}.{key}".lstrip("."))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _featvis_targets(value, f"{path}[{i}]")


def _default_files():
    return [f for f in sorted(CONFIG_DIR.rglob("*.yaml")) if f.relative_to(CONFIG_DIR).parts[0] not in PRESET_GROUPS]


@pytest.mark.parametrize("path", _default_files(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_a_config_and_the_object_it_builds_declare_the_same_defaults(path):
    disagree = []
    for where, block in _featvis_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False)):
        parameters = inspect.signature(get_object(block["_target_"])).parameters
        for key, value in block.items():
            parameter = parameters.get(key)
            if (parameter is None or parameter.default is inspect.Parameter.empty
                    or (isinstance(value, str) and "${" in value) or (isinstance(value, dict) and "_target_" in value)):
                continue  # not a default of the object, a value the config interpolates, or an object it builds
            default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
            if value != default:
                disagree.append(f"{where}.{key}: config {value!r}, Python {parameter.default!r}")
    assert not disagree, disagree


def test_the_synthesis_config_is_the_synthesis_spec():
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "synthesis" / "default.yaml"))
    spec = dataclasses.asdict(SynthesisSpec())
    assert set(config) <= set(spec), set(config) - set(spec)
    assert {key: spec[key] for key in config} == config


def test_feature_evolution_defaults_are_the_callback_configs():
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "callbacks" / "evolution.yaml"))["feature_evolution"]
    parameters = inspect.signature(featvis.FeatureEvolution).parameters
    shared = [k for k, p in parameters.items() if k in config and p.default is not inspect.Parameter.empty
              and "${" not in str(config[k])]  # not the run dir the config interpolates
    assert {"seeds", "steps", "spatial", "pre_relu", "log_frames", "linear_frames", "target"} <= set(shared)
    assert {k: parameters[k].default for k in shared} == {k: config[k] for k in shared}


def test_a_method_file_lists_only_what_differs_from_the_schema():
    plain = featvis.method_config("pixel_noprior")  # the file sets its name only
    schema = OmegaConf.to_container(OmegaConf.structured(MethodConfig(name="pixel_noprior")))
    assert plain == schema
    assert plain["step"] == dataclasses.asdict(SamplerSettings())
    assert plain["objective"] == dataclasses.asdict(ObjectiveSettings())
    for path in sorted((CONFIG_DIR / "method").glob("*.yaml")):
        method = featvis.method_config(path.stem)
        assert set(method) == {f.name for f in dataclasses.fields(MethodConfig)}, path.name
        for name, value in OmegaConf.to_container(OmegaConf.load(path)).get("step", {}).items():
            assert value != getattr(SamplerSettings(), name) or path.stem.endswith("multifaceted"), (
                f"{path.name}: step.{name}={value} restates the schema's default")


@pytest.mark.parametrize("old, new", [("lr=0.1", "method.step.lr"), ("eps3=0.2", "method.step.eps3"),
                                      ("selectivity=1", "method.objective.selectivity"),
                                      ("clip_quantile=0.9", "method.operators.clip.quantile")])
def test_an_old_method_key_is_one_line_naming_its_new_spelling(old, new):
    with pytest.raises(ConfigError, match=rf"^method\.{old.split('=')[0]} is now {new};"):
        featvis.method_config("dgn_am", old)


def test_an_old_method_key_on_the_command_line_is_one_line_and_exit_2():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "visualize.py"), "method=ppgn", "method.eps3=0.1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["featvis: error: method.eps3 is now method.step.eps3; "
                                                "expected method.step.eps3=<value>"]


def test_the_readme_has_no_method_key_the_schema_lacks():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key in set(re.findall(r"method\.([a-z_0-9.]+)=", readme)):
        top = key.split(".")[0]
        assert top in {f.name for f in dataclasses.fields(MethodConfig)}, f"README: method.{key}"
