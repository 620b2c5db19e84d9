"""Code statistics for a published DeePSiM generator, written beside its weights.

    python -m featvis.tools.deepsim upconvGAN_fc6.pt --from outputs/prior/<run>/checkpoints/last.ckpt
    python -m featvis.tools.deepsim upconvGAN_fc6.pt encoder=caffenet encoder.weights=alexnet-owt-7be5be79.pth \\
        data=imagefolder data.root=/data/imagenet image_size=227

checks and converts the weights (featvis.nets.deepsim_weights), then writes
upconvGAN_fc6.stats.pt: the statistics of real codes of the layer the generator inverts, taken
from a featvis prior or generator checkpoint on that code (`--from`) or estimated here from the
training images of `data` through the encoder (`encoder.stats_images` of them; the overrides are
train.py's).  `generator.ckpt=upconvGAN_fc6.pt` then loads both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from featvis.jobs.cli import fail
from featvis.errors import ConfigError, FeatvisError
from featvis.io import read_checkpoint
from featvis.nets.codes import CodeStatistics
from featvis.nets.deepsim_weights import (CODE_LAYERS, from_upconv, is_upconv, layer_from_name, read_statistics,
                                          save_statistics, statistics_path)


def estimate(layer: str, code_dim: int, overrides: list[str]) -> tuple[CodeStatistics, dict, int]:
    """Statistics of `layer` codes of the training images of `data`, through the encoder the
    overrides name; (statistics, encoder record, number of codes)."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from featvis.configs import compose_config
    from featvis.nets.codes import encode_all
    from featvis.jobs.train import load_encoder

    cfg = compose_config("config", ["task=prior", f"encoder.code_layer={layer}", *overrides])
    encoder, record = load_encoder(cfg)
    if encoder.code_dim != code_dim:
        raise ConfigError(f"encoder.code_layer={cfg.encoder.code_layer} has {encoder.code_dim} units; "
                          f"expected {code_dim}, the generator's code size")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = DataLoader(datamodule.train_set, batch_size=datamodule.batch_size)
    codes = encode_all(encoder.eval(), loader, max_items=cfg.encoder.stats_images)
    return CodeStatistics(code_dim).fit(codes), record, len(codes)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m featvis.tools.deepsim", description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a published generator: upconvGAN_fc6.pt, _fc7 or _fc8")
    parser.add_argument("--from", dest="source", help="a featvis prior or generator checkpoint on the same code")
    parser.add_argument("overrides", nargs="*", help="train.py overrides naming the encoder and data")
    args = parser.parse_args(argv)
    state = read_checkpoint(args.weights)
    if not is_upconv(state):
        raise ConfigError(f"{args.weights} is not a published DeePSiM generator; expected upconvGAN_fc6.pt, "
                          "_fc7 or _fc8 (defc7 ... deconv0)")
    generator = from_upconv(state, args.weights)
    layer = layer_from_name(args.weights) or ("fc8" if generator.code_dim == 1000 else None)
    if layer not in CODE_LAYERS:
        raise ConfigError(f"{args.weights}: cannot tell whether it inverts fc6 or fc7; expected the published "
                          "name upconvGAN_fc6.pt or upconvGAN_fc7.pt")
    if bool(args.source) == bool(args.overrides):
        raise ConfigError("expected either --from <prior or generator checkpoint> or overrides naming the "
                          "encoder and data (encoder=caffenet encoder.weights=... data=...)")
    if args.source:
        stats, record = read_statistics(args.source, generator.code_dim)
        if record.get("code_layer") not in (None, layer):
            raise ConfigError(f"--from {args.source} holds statistics of {record['code_layer']} codes; "
                              f"expected {layer}, the layer {args.weights} inverts")
        count = int(stats.count)
    else:
        stats, record, count = estimate(layer, generator.code_dim, args.overrides)
    out = save_statistics(stats, statistics_path(args.weights), {**record, "code_layer": layer})
    print(f"wrote {out}: statistics of {count} {layer} codes; generator.ckpt={args.weights} now loads them")
    return out


if __name__ == "__main__":
    try:
        main()
    except FeatvisError as err:
        fail(err)
    sys.exit(0)
