"""Feature inversion: what a ResNet-18 keeps of one image at three depths.

Each inversion is an image drawn (pixel AM from grey) so that its activation at one layer matches
the original's; the unit "layer2:invert=photo.png" names that objective.  Early layers keep the
image nearly whole; deeper ones keep less of where things are and what colour they have.
The grid shows the original (as the network reads it: resized and centre-cropped) beside the
inversions at layer1, layer2 and layer3.

    python examples/feature_inversion.py --image photo.jpg --weights resnet18.pth --out inversion.png
    python examples/feature_inversion.py --out inversion.png       # a generated shape image

--weights is a local state dict of torchvision's resnet18 (or a Lightning checkpoint holding it as
`net`); without it the weights are random, whose early layers still keep much of the image.
"""

import argparse
from pathlib import Path

import torch
import torchvision

import featvis
from featvis.data.shapes import ShapesDataset
from featvis.io import save_png
from featvis.nets.targets import IMAGENET_MEAN, IMAGENET_STD, load_weights
from featvis.reports.grids import labelled_grid
from featvis.synthesis.methods import read_image

LAYERS = ["layer1", "layer2", "layer3"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, help="a PNG or JPEG file; default: a generated shape image")
    parser.add_argument("--weights", help="a local resnet18 state dict or Lightning checkpoint; default: random")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("inversion.png"))
    parser.add_argument("--small", action="store_true", help="seconds: 32 px, 32 steps")
    args = parser.parse_args(argv)
    size, steps = (32, 32) if args.small else (args.size, args.steps)

    image = args.image
    if image is None:  # the unit reads a file: write the generated image beside the grid
        shape = ShapesDataset(1, image_size=size, seed=2)[0][0]
        image = save_png(shape, args.out.with_name(args.out.stem + "_original.png"))
    torch.manual_seed(0)  # the same random weights every run
    net = torchvision.models.resnet18(num_classes=args.num_classes)
    if args.weights:
        load_weights(net, args.weights, "torchvision resnet18")
    target = featvis.as_target(net, image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    # The match is to the activation of the image as it is: the methods' transformation robustness
    # (reading the synthesis jittered, rescaled and rotated) would misalign it, most at layer1.
    # Plain pixel AM keeps the colours; pixel_fft's drift towards orange on a random-weight net.
    method = featvis.method_config("pixel", "step.jitter=0", "step.scale=0.0", "step.rotate=0.0")
    found = featvis.synthesize(target, [f"{layer}:invert={image}" for layer in LAYERS], method, seeds=1,
                               steps=steps)
    original = read_image(str(image), size)  # what the inversions matched
    grid = labelled_grid(torch.cat([original, found.images]), 1, [""], ["original", *LAYERS],
                         scale=4 if size <= 64 else 2)
    save_png(grid, args.out)
    # each row's activation is the match score, 1 - |a - a_ref|^2 / |a_ref|^2 (1: a perfect match); on
    # random weights it is near 1 at layer3 too, where the grid shows how little of the image is left
    scores = {layer: round(row["best"]["activation"], 3) for layer, row in zip(LAYERS, found.rows)}
    print(f"inverted {image.name} at {size} px, match scores {scores}: {args.out}")
    return {"grid": args.out, "image": image, "scores": scores}


if __name__ == "__main__":
    main()
