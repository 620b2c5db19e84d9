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

from featvis.errors import CheckpointError
from featvis.nets.alexnet import AlexNet

FORMAT_VERSION = 1
NETS: dict[str, type[nn.Module]] = {AlexNet.arch: AlexNet}


def classifier_record(net: nn.Module, class_names: list[str]) -> dict[str, Any]:
    spec = getattr(net, "spec", None)
    if spec is None or spec.get("arch") not in NETS:
        raise CheckpointError(f"{type(net).__name__} has no featvis spec; expected one of {sorted(NETS)}")
    return {"kind": "classifier", "format": FORMAT_VERSION, "net": dict(spec),
            "class_names": list(class_names)}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded with weights_only=True on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; expected a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({reason[:160]}); "
                              "expected a featvis checkpoint of plain tensors and types") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}; expected a dict")
    return checkpoint


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
    try:
        net.load_state_dict(submodule_state(checkpoint["state_dict"], "net"))
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit its own spec ({str(err)[:160]})") from None
    return net.eval(), record
