"""MACO on a torchvision ResNet-18: preferred images of a few units, faded where they did not matter.

MACO (Fel et al. 2023) optimizes only the phase of each image's spectrum; its magnitude is fixed
to the mean magnitude spectrum of real images, so the syntheses keep natural images' energy per
frequency.  It also accumulates |d objective / d image| into an alpha mask: the grid fades each
image to white where the unit did not look.

    python examples/resnet_maco.py --data ~/my_images --weights resnet18.pth --out maco.png
    python examples/resnet_maco.py --units layer3:7 layer4:12 logits:1 --out maco.png

--weights is a local state dict of torchvision's resnet18 (or a Lightning checkpoint holding it
as `net`, e.g. from own_lightning_module.py with --num-classes set); without it the weights are
random.  --data (an ImageFolder) gives the real images of the magnitude spectrum; without it
generated shape images do.
"""

import argparse
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

import featvis
from featvis.data.shapes import ShapesDataset
from featvis.io import save_png
from featvis.nets.targets import IMAGENET_MEAN, IMAGENET_STD, load_weights
from featvis.reports.grids import labelled_grid


def real_images(data: Path | None, size: int, count: int) -> torch.utils.data.DataLoader:
    """Batches of (images in [0, 1], labels): no Normalize, featvis normalizes for the target itself."""
    if data is None:
        dataset = ShapesDataset(count, image_size=size, seed=1)
    else:
        to_tensor = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
        dataset = torchvision.datasets.ImageFolder(str(data), transform=to_tensor)
    return torch.utils.data.DataLoader(dataset, batch_size=32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an ImageFolder of real images; default: generated shapes")
    parser.add_argument("--weights", help="a local resnet18 state dict or Lightning checkpoint; default: random")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--units", nargs="+", default=["layer2:3", "layer3:7", "layer4:12", "logits:1"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: the method's (200)")
    parser.add_argument("--out", type=Path, default=Path("maco.png"))
    parser.add_argument("--small", action="store_true", help="seconds: 32 px, 2 seeds, 16 steps")
    args = parser.parse_args(argv)
    size, seeds, steps = (32, 2, 16) if args.small else (args.size, args.seeds, args.steps)

    torch.manual_seed(0)  # the same random weights every run
    net = torchvision.models.resnet18(num_classes=args.num_classes)
    if args.weights:
        load_weights(net, args.weights, "torchvision resnet18")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    target = featvis.as_target(net, image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(device)

    # `real` is what MACO's magnitude spectrum is averaged over; a real set also asks synthesize for
    # its faithfulness report (top-k comparison, KID), which this example does not show: evaluation=False.
    # Conv units are read as their channel's mean before the block's ReLU, so every unit gets a gradient.
    real = real_images(args.data, size, 64 if args.small else 500)
    found = featvis.synthesize(target, args.units, "pixel_maco", real=real, seeds=seeds, steps=steps,
                               spatial="mean", pre_relu=True, evaluation=False)
    images, alpha = found.images, found.result.alpha
    if alpha is not None:  # white where the objective's gradient never reached
        images = images * alpha + (1 - alpha)
    labels = [unit.label for unit in found.units]
    grid = labelled_grid(images, len(labels), labels, [f"seed {k}" for k in range(seeds)],
                         scale=4 if size <= 64 else 1)
    save_png(grid, args.out)
    best = [round(row["best"]["activation"], 2) for row in found.rows]
    print(f"pixel_maco: {len(labels)} units x {seeds} seeds at {size} px (best activations {best}): {args.out}")
    return {"grid": args.out, "found": found}


if __name__ == "__main__":
    main()
