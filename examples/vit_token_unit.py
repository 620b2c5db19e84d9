"""One feature of a Vision Transformer's token layer, read three ways: at the class token, as the
mean over the patches, and at one patch.

A token layer's output is (batch, tokens, features); a unit of it names a feature and where it is
read: "blocks.5:7@cls", "blocks.5:7@mean", "blocks.5:7@12" (patch 12, row-major) or "@row,col".
The grid has one row per reading of the same feature, drawn with pixel_fft.

    python examples/vit_token_unit.py --out vit.png                 # a small torchvision ViT
    python examples/vit_token_unit.py --timm vit_tiny_patch16_224 --weights vit_tiny.pth --size 224 --out vit.png

--timm builds the named timm model (timm must be installed) and reads its normalization from the
model's own pretrained_cfg; --weights is a local state dict for it.  Without --weights the weights
are random.
"""

import argparse
from pathlib import Path

import torch
import torchvision

import featvis
from featvis.io import save_png
from featvis.nets.targets import load_weights
from featvis.reports.grids import labelled_grid


def build(args, size: int):
    """(network, its last token layer, patches per side, mean, std)."""
    if args.timm:
        import timm

        net = timm.create_model(args.timm, pretrained=False, num_classes=args.num_classes, img_size=size)
        if args.weights:
            load_weights(net, args.weights, f"timm {args.timm}")
        cfg = net.pretrained_cfg
        return net, f"blocks.{len(net.blocks) - 1}", net.patch_embed.grid_size[0], cfg["mean"], cfg["std"]
    patch = 8
    net = torchvision.models.VisionTransformer(image_size=size, patch_size=patch, num_layers=4, num_heads=4,
                                               hidden_dim=64, mlp_dim=128, num_classes=args.num_classes)
    if args.weights:
        load_weights(net, args.weights, "torchvision VisionTransformer")
    # mean = std = 0.5: it reads images scaled to [-1, 1] (say what your own net was trained on)
    return net, f"encoder.layers.encoder_layer_{len(net.encoder.layers) - 1}", size // patch, 0.5, 0.5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timm", help="a timm model name instead of the small torchvision ViT")
    parser.add_argument("--weights", help="a local state dict for the model; default: random weights")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--feature", type=int, default=5, help="the feature (channel) of the token layer")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("vit_token_unit.png"))
    parser.add_argument("--small", action="store_true", help="seconds: 32 px, 2 seeds, 12 steps")
    args = parser.parse_args(argv)
    size, seeds, steps = (32, 2, 12) if args.small else (args.size, args.seeds, args.steps)

    torch.manual_seed(0)  # the same random weights every run
    net, layer, side, mean, std = build(args, size)
    target = featvis.as_target(net, image_size=size, mean=mean, std=std)
    patch = side * (side // 2) + side // 2  # the patch nearest the centre, row-major
    units = [f"{layer}:{args.feature}@cls", f"{layer}:{args.feature}@mean", f"{layer}:{args.feature}@{patch}"]
    found = featvis.synthesize(target, units, "pixel_fft", seeds=seeds, steps=steps)

    labels = ["class token", "patch mean", f"patch {patch}"]
    grid = labelled_grid(found.images, len(units), labels, [f"seed {k}" for k in range(seeds)],
                         scale=4 if size <= 64 else 1)
    save_png(grid, args.out)
    best = [round(row["best"]["activation"], 2) for row in found.rows]
    print(f"{layer} feature {args.feature} at the class token, the patch mean and patch {patch} "
          f"(best activations {best}): {args.out}")
    return {"grid": args.out, "rows": found.rows, "units": [u.label for u in found.units]}


if __name__ == "__main__":
    main()
