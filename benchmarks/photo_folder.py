"""A small real-image folder of natural photographs for `data=imagefolder` and `quality.py --data-root`.

    pip install --no-deps scikit-image      # ships its sample photographs in its wheel
    python benchmarks/photo_folder.py DIR [--train-per-class 150] [--val-per-class 100] [--size 64]

Ten classes, one photograph each (astronaut, brick wall, cat, coffee, coins, grass, Hubble deep
field, immunohistochemistry, motorcycle, rocket; three are grey), and each image a random square
crop of its class's photograph (a side of 20-35% of the photograph's shorter side, flipped half of
the time), resized to --size px RGB. Training crops come from the left 65% of each photograph,
validation crops from the rest, so no validation pixel was seen in training. Writes
DIR/train/<class>/*.png and DIR/val/<class>/*.png (the ImageNet layout). Reads the photographs
from scikit-image's installed data folder without importing it; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from PIL import Image

PHOTOS = {"astronaut": "astronaut.png", "brick": "brick.png", "cat": "chelsea.png", "coffee": "coffee.png",
          "coins": "coins.png", "grass": "grass.png", "hubble": "hubble_deep_field.jpg", "ihc": "ihc.png",
          "motorcycle": "motorcycle_left.png", "rocket": "rocket.jpg"}
TRAIN_WIDTH = 0.65   # the share of each photograph's width that training crops come from
CROP_SIDES = (0.20, 0.35)  # a crop's side, as a share of the photograph's shorter side


def data_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("photo_folder: scikit-image is not installed; expected `pip install --no-deps scikit-image`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def crops(photo: Image.Image, count: int, left: float, right: float, size: int,
          generator: torch.Generator) -> list[Image.Image]:
    """`count` random square crops whose boxes lie within columns [left, right) (shares of the width)."""
    width, height = photo.size
    short = min(width, height)
    found = []
    for _ in range(count):
        u = torch.rand(4, generator=generator).tolist()
        side = int(short * (CROP_SIDES[0] + (CROP_SIDES[1] - CROP_SIDES[0]) * u[0]))
        x0 = int(left * width + (right * width - left * width - side) * u[1])
        y0 = int((height - side) * u[2])
        crop = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
        found.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if u[3] < 0.5 else crop)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=150)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("train_per_class", "val_per_class", "size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"photo_folder: --{name.replace('_', '-')} {getattr(args, name)}; expected a positive integer")
    folder = data_folder()
    generator = torch.Generator().manual_seed(args.seed)
    for label, file in PHOTOS.items():
        path = folder / file
        if not path.is_file():
            raise SystemExit(f"photo_folder: {path} does not exist; expected scikit-image's sample photograph")
        photo = Image.open(path).convert("RGB")
        for split, count, left, right in (("train", args.train_per_class, 0.0, TRAIN_WIDTH),
                                          ("val", args.val_per_class, TRAIN_WIDTH, 1.0)):
            (args.out / split / label).mkdir(parents=True, exist_ok=True)
            for index, crop in enumerate(crops(photo, count, left, right, args.size, generator)):
                crop.save(args.out / split / label / f"{index:04d}.png")
    print(f"wrote {len(PHOTOS) * args.train_per_class} training and {len(PHOTOS) * args.val_per_class} "
          f"validation images of {len(PHOTOS)} photographs to {args.out}")


if __name__ == "__main__":
    main()
