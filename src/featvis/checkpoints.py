"""Self-describing checkpoints, loaded safely.

Every checkpoint featvis writes is a Lightning checkpoint with one more entry,
`checkpoint["featvis"]`, a dict of plain types that says what it holds (`kind`),
the network's constructor arguments (`net`, with an `arch` name looked up in
`NETS`; nothing in a checkpoint is ever imported or called) and its labels.
Everything is read with `torch.load(weights_only=True)`, so a crafted pickle
cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from featvis.errors import CheckpointError, ConfigError
from featvis.io import read_checkpoint
from featvis.nets.alexnet import AlexNet
from featvis.nets.codes import CodeDAE, CodeStatistics
from featvis.nets.deepsim_weights import is_upconv, load_upconv
from featvis.nets.generator import Discriminator, Generator

# The layout of the `featvis` record; featvis.io.read_checkpoint refuses a newer one by name.
FORMAT_VERSION = 1
NETS: dict[str, type[nn.Module]] = {
    cls.arch: cls for cls in (AlexNet, Generator, Discriminator, CodeDAE)}


def classifier_record(net: nn.Module, class_names: list[str]) -> dict[str, Any]:
    spec = getattr(net, "spec", None)
    if spec is None or spec.get("arch") not in NETS:
        raise CheckpointError(f"{type(net).__name__} has no featvis spec; expected one of {sorted(NETS)}")
    return {"kind": "classifier", "format": FORMAT_VERSION, "net": dict(spec),
            "class_names": list(class_names)}


def encoder_record(checkpoint: str | None, net: nn.Module, class_names: list[str], code_layer: str,
                   comparator_layer: str, code_dim: int) -> dict[str, Any]:
    """What a prior needs to know about the encoder it was trained on."""
    spec = getattr(net, "spec", {})
    return {"checkpoint": str(checkpoint) if checkpoint else None, "net": dict(spec),
            "class_names": list(class_names), "code_layer": code_layer,
            "comparator_layer": comparator_layer, "code_dim": int(code_dim),
            "image_size": spec.get("image_size"), "input_mean": spec.get("input_mean"),
            "input_std": spec.get("input_std")}


def generator_record(generator: nn.Module, discriminator: nn.Module, encoder: dict[str, Any],
                     ema: bool) -> dict[str, Any]:
    return {"kind": "generator", "format": FORMAT_VERSION, "generator": dict(generator.spec),
            "discriminator": dict(discriminator.spec), "ema": bool(ema), "encoder": dict(encoder),
            "code_dim": generator.spec["code_dim"], "image_size": generator.image_size}


def prior_record(dae: nn.Module, encoder: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "prior", "format": FORMAT_VERSION, "dae": dict(dae.spec), "encoder": dict(encoder),
            "code_dim": dae.spec["code_dim"]}


def load_record(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(featvis record, checkpoint) of a checkpoint that must be of `kind`."""
    checkpoint = read_checkpoint(path)
    record = checkpoint.get("featvis")
    found = record.get("kind") if isinstance(record, dict) else None
    if found != kind:
        what = f"a {found} checkpoint" if found else "not a featvis checkpoint"
        raise CheckpointError(f"checkpoint {path} is {what}; expected a {kind} checkpoint")
    return record, checkpoint


def submodule_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a LightningModule state dict under `prefix.`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}


def build_net(spec: dict[str, Any]) -> nn.Module:
    arch = spec.get("arch")
    if arch not in NETS:
        raise CheckpointError(f"network arch {arch!r} is unknown; expected one of {sorted(NETS)}")
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    return NETS[arch](**kwargs)


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier checkpoint's network (eval mode, CPU) and its record."""
    record, checkpoint = load_record(path, "classifier")
    net = build_net(record["net"])
    _load_into(net, submodule_state(checkpoint.get("state_dict", {}), "net"), path, "classifier")
    return net.eval(), record


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"checkpoint {path}: {what} weights do not fit its own spec ({detail[:160]})") from None


def _code_stats(checkpoint: dict[str, Any], code_dim: int, path: str | Path) -> CodeStatistics:
    stats = CodeStatistics(code_dim)
    _load_into(stats, submodule_state(checkpoint["state_dict"], "code_stats"), path, "code statistics")
    return stats


def load_generator(path: str | Path,
                   stats: str | Path | None = None) -> tuple[nn.Module, CodeStatistics, dict[str, Any]]:
    """A generator checkpoint's G (its EMA weights when it kept them), code statistics and record.

    `path` may also be a published DeePSiM generator (upconvGAN_fc6.pt, fc7, fc8): converted to a
    Generator, with code statistics from `stats` or the file beside it (featvis.nets.deepsim_weights).
    """
    try:
        record, checkpoint = load_record(path, "generator")
    except CheckpointError:
        state = read_checkpoint(path)  # only files that are not generator checkpoints read twice
        if not is_upconv(state):
            raise
        return load_upconv(path, state, stats)
    if stats is not None:
        raise ConfigError(f"generator {path} is a featvis checkpoint with its own code statistics; "
                          f"expected no separate statistics ({stats})")
    generator = build_net(record["generator"])
    prefix = "generator_ema.module" if record.get("ema") else "generator"
    _load_into(generator, submodule_state(checkpoint["state_dict"], prefix), path, "generator")
    return generator.eval(), _code_stats(checkpoint, record["code_dim"], path), record


def load_prior(path: str | Path) -> tuple[CodeDAE, CodeStatistics, dict[str, Any]]:
    """A prior checkpoint's DAE, code statistics and record."""
    record, checkpoint = load_record(path, "prior")
    dae = build_net(record["dae"])
    _load_into(dae, submodule_state(checkpoint["state_dict"], "dae"), path, "DAE")
    return dae.eval(), _code_stats(checkpoint, record["code_dim"], path), record


def check_same_code(generator: dict[str, Any], prior: dict[str, Any]) -> None:
    """A generator and a code prior must speak the same code (layer and size)."""
    g, p = generator["encoder"], prior["encoder"]
    if (g["code_dim"], g["code_layer"]) != (p["code_dim"], p["code_layer"]):
        raise CheckpointError(
            f"prior code {p['code_layer']} of size {p['code_dim']} does not match the generator's "
            f"{g['code_layer']} of size {g['code_dim']}; expected priors trained on the same code")
