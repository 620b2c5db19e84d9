"""The published DeePSiM generators (Dosovitskiy & Brox 2016) as featvis Generators.

The Caffe generators that invert CaffeNet's fc6, fc7 and fc8 circulate translated to PyTorch
as state dicts named `upconvGAN_<layer>.pt`: fully connected `defc7`, `defc6`, `defc5`
(reshaped to 256x4x4), then `deconv5`, `conv5_1`, `deconv4`, `conv4_1`, `deconv3`,
`conv3_1`, `deconv2`, `deconv1`, `deconv0`, LeakyReLU(0.3) and a linear output in BGR
around Caffe's mean pixel on the 0-255 scale.  That is conf/generator/deepsim.yaml layer for
layer, so `from_upconv` builds that Generator and copies the weights in:

- the 3x3 `convN_1` layers are stride-1 transposed convolutions there and plain convolutions
  here (the same map: in/out swapped, kernel flipped);
- the colour order and scale are folded into the last layer's weights and bias, so the module
  is a plain Generator whose output is RGB in [0, 1] like every featvis G.

The pool5 generator takes a 256x6x6 map through three convolutions before the up-stages; it
does not fit the Generator (a code vector -> a 4x4 map) and is refused.

A published generator comes without the statistics of the codes it inverts, which code
methods need (starting codes, clipping); `read_statistics` reads them from a file (see
featvis.tools.deepsim, which writes one beside the weights).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from featvis.errors import CheckpointError, ConfigError
from featvis.io import atomic_path, commit, read_checkpoint
from featvis.nets.codes import CodeStatistics
from featvis.nets.generator import Generator

# conf/generator/deepsim.yaml's net (without code_dim): the architecture the files hold.
DEEPSIM_NET = {"fc_dims": [4096, 4096], "start_channels": 256,
               "stages": [[256, 512], [256, 256], [128, 128], [64, 0], [32, 0]],
               "negative_slope": 0.3, "upsample": "deconv", "norm": "none", "to_rgb": "up"}

# Caffe's mean pixel, in RGB order, on the 0-255 scale.
CAFFE_MEAN_RGB = (123.0, 117.0, 104.0)

# Published layer -> (featvis parameter prefix, published weight shape; None: the code size).
LAYERS = {
    "defc7": ("fc.0", (4096, None)),
    "defc6": ("fc.2", (4096, 4096)),
    "defc5": ("fc.4", (4096, 4096)),
    "deconv5": ("deconv.up0", (256, 256, 4, 4)),
    "conv5_1": ("deconv.conv0", (256, 512, 3, 3)),
    "deconv4": ("deconv.up1", (512, 256, 4, 4)),
    "conv4_1": ("deconv.conv1", (256, 256, 3, 3)),
    "deconv3": ("deconv.up2", (256, 128, 4, 4)),
    "conv3_1": ("deconv.conv2", (128, 128, 3, 3)),
    "deconv2": ("deconv.up3", (128, 64, 4, 4)),
    "deconv1": ("deconv.up4", (64, 32, 4, 4)),
    "deconv0": ("deconv.to_rgb", (32, 3, 4, 4)),
}
# Stride-1 transposed convolutions in the files, plain convolutions in the Generator.
TRANSPOSED_3X3 = ("conv5_1", "conv4_1", "conv3_1")
CODE_LAYERS = ("fc6", "fc7", "fc8")
NAME = re.compile(r"upconvGAN_(fc6|fc7|fc8|pool5)", re.IGNORECASE)


def published_keys(state: dict[str, Any]) -> dict[str, Any]:
    """The state dict under its layer names: without a `G.` prefix, and with `.1.` infixes that
    some copies carry dropped."""
    keys = {}
    for key, value in state.items():
        if isinstance(key, str):
            key = key.removeprefix("G.").replace(".1.", ".")
        keys[key] = value
    return keys


def is_upconv(state: dict[str, Any]) -> bool:
    """Whether a loaded file is one of the published upconvGAN state dicts (by its key names)."""
    keys = published_keys(state)
    return "deconv0.weight" in keys and ("defc7.weight" in keys or "Rconv6.weight" in keys)


def layer_from_name(path: str | Path) -> str | None:
    """fc6, fc7, fc8 or pool5 from a published file name (upconvGAN_fc6.pt), else None."""
    found = NAME.search(Path(path).name)
    return found.group(1).lower() if found else None


def from_upconv(state: dict[str, Any], source: str | Path = "upconvGAN") -> Generator:
    """The featvis Generator (conf/generator/deepsim.yaml) holding a published DeePSiM generator,
    its output converted to RGB in [0, 1]."""
    keys = published_keys(state)
    if "Rconv6.weight" in keys or layer_from_name(source) == "pool5":
        raise CheckpointError(f"checkpoint {source} is the DeePSiM pool5 generator (a 256x6x6 input); "
                              "expected the fc6, fc7 or fc8 generator (a code vector)")
    expected = [f"{name}.{part}" for name in LAYERS for part in ("weight", "bias")]
    missing = [key for key in expected if key not in keys]
    if missing:
        raise CheckpointError(f"checkpoint {source} lacks {missing[0]}; expected the published upconvGAN "
                              f"layers {', '.join(LAYERS)}")
    # A key of no published layer means another network's file (or a layer this conversion would drop).
    extra = [str(key) for key in keys if key not in expected]
    if extra:
        raise CheckpointError(f"checkpoint {source} holds {extra[0]}, which no published upconvGAN layer has; "
                              f"expected only the weights and biases of {', '.join(LAYERS)}")
    code_dim = int(keys["defc7.weight"].shape[1]) if keys["defc7.weight"].ndim == 2 else -1
    for name, (_, shape) in LAYERS.items():
        want = tuple(code_dim if d is None else d for d in shape)
        weight, bias = keys[f"{name}.weight"], keys[f"{name}.bias"]
        if not (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)) or \
                tuple(weight.shape) != want or tuple(bias.shape) != (want[0] if name.startswith("defc") else want[1],):
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise CheckpointError(f"checkpoint {source}: {name}.weight has shape {got}; expected {want} "
                                  "(the published fc6/fc7/fc8 generator)")
    generator = Generator(code_dim, **DEEPSIM_NET)
    converted = {}
    for name, (prefix, _) in LAYERS.items():
        weight, bias = keys[f"{name}.weight"].float(), keys[f"{name}.bias"].float()
        if name in TRANSPOSED_3X3:
            weight = weight.transpose(0, 1).flip(2, 3)
        if name == "deconv0":
            weight, bias = rgb_output_layer(weight, bias)
        converted[f"{prefix}.weight"], converted[f"{prefix}.bias"] = weight.contiguous(), bias.contiguous()
    generator.load_state_dict(converted)
    return generator.eval()


def rgb_output_layer(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """deconv0's weight (in, 3, k, k) and bias for RGB in [0, 1]: out channel c takes BGR channel
    2 - c, plus the mean, over 255, less the 0.5 the Generator adds to its output."""
    mean = torch.tensor(CAFFE_MEAN_RGB, dtype=bias.dtype, device=bias.device)
    return weight.flip(1) / 255.0, (bias.flip(0) + mean) / 255.0 - 0.5


def caffe_to_rgb(bgr: torch.Tensor) -> torch.Tensor:
    """A published generator's raw output (BGR, mean-subtracted, 0-255) as RGB in [0, 1] (unclamped)."""
    mean = torch.tensor(CAFFE_MEAN_RGB, dtype=bgr.dtype, device=bgr.device).view(1, 3, 1, 1)
    return (bgr.flip(1) + mean) / 255.0


# --- code statistics -------------------------------------------------------------------------

STATS_KIND = "code_statistics"


def statistics_path(weights: str | Path) -> Path:
    """Where the code statistics of a published generator live: upconvGAN_fc6.stats.pt beside it."""
    weights = Path(weights).expanduser()
    return weights.with_name(f"{weights.stem}.stats.pt")


def save_statistics(stats: CodeStatistics, path: str | Path, encoder: dict[str, Any]) -> Path:
    """A statistics file: CodeStatistics' buffers and the record of the encoder whose codes they are."""
    path = Path(path).expanduser()
    tmp = atomic_path(path)
    torch.save({"kind": STATS_KIND, "encoder": dict(encoder), "quantile_levels": list(stats.quantile_levels),
                **{k: v.detach().cpu() for k, v in stats.state_dict().items()}}, tmp)
    return commit(tmp, path)


def read_statistics(path: str | Path, code_dim: int) -> tuple[CodeStatistics, dict[str, Any]]:
    """(code statistics, encoder record or {}) from a file of one of three kinds: a statistics
    file (`save_statistics`), a featvis prior or generator checkpoint (its code statistics), or a
    dict with `codes`, an N x code_dim tensor of real codes."""
    data = read_checkpoint(path)
    stats = CodeStatistics(code_dim)
    if data.get("kind") == STATS_KIND:
        levels = data.get("quantile_levels", list(stats.quantile_levels))
        stats = CodeStatistics(code_dim, levels)
        state = {k: data[k] for k in stats.state_dict() if k in data}
        encoder = data.get("encoder") or {}
    elif isinstance(data.get("featvis"), dict) and "state_dict" in data:
        state = {k.removeprefix("code_stats."): v for k, v in data["state_dict"].items()
                 if k.startswith("code_stats.")}
        encoder = data["featvis"].get("encoder") or {}
        if not state:
            raise CheckpointError(f"checkpoint {path} is a {data['featvis'].get('kind')} checkpoint without code "
                                  "statistics; expected a prior or generator checkpoint")
    elif isinstance(data.get("codes"), torch.Tensor):
        codes = data["codes"]
        if codes.ndim != 2 or codes.shape[1] != code_dim or len(codes) < 2:
            raise ConfigError(f"code statistics {path} hold codes of shape {tuple(codes.shape)}; expected "
                              f"(N >= 2, {code_dim}), the generator's code size")
        return stats.fit(codes), {}
    else:
        raise CheckpointError(f"code statistics {path} hold none of the known entries; expected a file from "
                              "python -m featvis.tools.deepsim, a prior or generator checkpoint, or {'codes': N x D tensor}")
    found = state.get("mean")
    if not isinstance(found, torch.Tensor) or found.shape != (code_dim,):
        size = tuple(found.shape) if isinstance(found, torch.Tensor) else None
        raise ConfigError(f"code statistics {path} are of codes of shape {size}; expected ({code_dim},), the "
                          "generator's code size")
    try:
        stats.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"code statistics {path} do not fit ({str(err).splitlines()[-1][:120]}); "
                              f"expected mean, std, quantiles and count of {code_dim} units") from None
    return stats, dict(encoder)


def load_upconv(path: str | Path, state: dict[str, Any],
                stats: str | Path | None = None) -> tuple[Generator, CodeStatistics, dict[str, Any]]:
    """A published generator file, converted, with its code statistics (`stats`, else the file
    beside the weights) and a generator record that says what it is."""
    generator = from_upconv(state, path)
    named = layer_from_name(path)
    stats_file = Path(stats).expanduser() if stats else statistics_path(path)
    if not stats and not stats_file.is_file():
        raise CheckpointError(f"generator {path} is a published DeePSiM generator without code statistics; "
                              f"expected {stats_file} (written by python -m featvis.tools.deepsim {path} ...)")
    code_stats, encoder = read_statistics(stats_file, generator.code_dim)
    layer = named or encoder.get("code_layer") or ("fc8" if generator.code_dim == 1000 else None)
    if layer not in CODE_LAYERS:
        raise CheckpointError(f"generator {path}: cannot tell which layer's codes it inverts; expected a "
                              "published name (upconvGAN_fc6.pt, _fc7, _fc8) or statistics of a named code layer")
    if encoder.get("code_layer") not in (None, layer):
        raise ConfigError(f"code statistics {stats_file} are of {encoder['code_layer']} codes; expected "
                          f"statistics of {layer}, the layer generator {path} inverts")
    encoder = {"checkpoint": None, "net": {}, "class_names": [], "comparator_layer": None,
               "image_size": None, "input_mean": None, "input_std": None, **encoder,
               "code_layer": layer, "code_dim": generator.code_dim}
    record = {"kind": "generator", "format": 1, "source": "deepsim", "weights": str(path), "layer": layer,
              "colour": "BGR around Caffe's mean pixel on 0-255, converted to RGB in [0, 1]",
              "statistics": str(stats_file), "generator": dict(generator.spec), "discriminator": None,
              "ema": False, "encoder": encoder, "code_dim": generator.code_dim,
              "image_size": generator.image_size}
    return generator, code_stats, record
