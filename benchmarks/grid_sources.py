"""Where the generator's grid artefact comes from (issue: priors that draw the class).

    python benchmarks/grid_sources.py [--generator G.ckpt --encoder E.ckpt] [--images 512]
                                      [--syntheses DIR ...]

`grid_artifact_score` (featvis.synthesis.evaluation) reads the batch-averaged power spectrum, so
it adds two things: a pattern that stands at the same place in every image (the batch's mean
image: a frame, a fixed texture) and structure at the up-sampling periods that changes from
image to image.  This script scores each part apart, with the mean image removed ("varying"):

1. Untrained generators of the tiny preset (conf/generator/tiny.yaml) on random rectified codes,
   for each up-sampling, normalization and convolution padding, over `--inits` initializations:
   what the architecture prints before any training.  The padding is not a config option; it is
   set on the 3x3 convolutions here.
2. With --generator and --encoder: a trained G on `shapes` validation images x, its
   reconstructions G(E(x)) and G on codes drawn from its code statistics, each scored whole and
   varying, `fixed_pattern`: the spatial spread of G's mean image over the real images' one, and
   `spectral`: featvis.training.losses.spectral_loss of the first half of the images against the
   other half of the real images (for the real images: the spread between two real halves).
3. With --syntheses DIR ...: the saved syntheses of visualize.py output folders (each method's
   folder of a benchmarks/quality.py run: images/<unit>/seed<k>_best.png), scored at each period
   alone (2, 4, 8, 16 pixels), whole and varying: which period the score's maximum comes from.

Prints a table, then, as its last line, one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from featvis.checkpoints import load_classifier, load_generator
from featvis.nets.adapters import fit_images
from featvis.nets.encoder import Encoder
from featvis.synthesis.evaluation import grid_artifact_score
from featvis.training.losses import spectral_loss

ROOT = Path(__file__).resolve().parents[1]


def varying(images: torch.Tensor) -> torch.Tensor:
    """The images less their batch's mean image: what changes from one image to the next."""
    return images - images.mean(0, keepdim=True)


def fixed_spread(images: torch.Tensor) -> float:
    """The spatial spread of a batch's mean image (std over pixels, mean over channels)."""
    return float(images.mean(0).std((-2, -1)).mean())


def untrained(images: int, inits: int) -> dict[str, dict[str, float]]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        net_cfg = compose("config", overrides=["task=generator"]).generator.net
    found = {}
    print(f"{'untrained G (median of ' + str(inits) + ' inits)':<40}{'whole':>8}{'varying':>9}")
    for upsample, norm, padding in itertools.product(("nearest", "bilinear"), ("none", "group"),
                                                      ("zeros", "reflect")):
        scores = []
        for seed in range(inits):
            torch.manual_seed(seed)
            generator = instantiate(net_cfg, code_dim=1024, upsample=upsample, norm=norm).eval()
            for module in generator.modules():
                if isinstance(module, nn.Conv2d):
                    module.padding_mode = padding
            with torch.no_grad():
                out = generator(torch.randn(images, 1024).relu())
            scores.append((grid_artifact_score(out), grid_artifact_score(varying(out))))
        whole, moving = (round(statistics.median(s), 2) for s in zip(*scores))
        name = f"{upsample}/{norm}/{padding}"
        found[name] = {"whole": whole, "varying": moving}
        print(f"{name:<40}{whole:>8}{moving:>9}")
    return found


def trained(generator_ckpt: str, encoder_ckpt: str, images: int) -> dict[str, float]:
    generator, stats, record = load_generator(generator_ckpt)
    net, _ = load_classifier(encoder_ckpt)
    encoder = Encoder(net, code_layer=record["encoder"]["code_layer"])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        data_cfg = compose("visualize").data
    data = instantiate(data_cfg, image_size=net.image_size, val_size=images)
    data.setup("validate")
    real = torch.cat([batch[0] for batch in data.val_dataloader()])[:images]
    with torch.no_grad():
        shown = {"real images": real,
                 "G(E(x))": generator(encoder.code(fit_images(real, encoder.image_size))).clamp(0, 1),
                 "G(drawn codes)": generator(stats.sample(images, torch.Generator().manual_seed(0))).clamp(0, 1)}
    found = {}
    half = images // 2
    print(f"\n{'trained G':<40}{'whole':>8}{'varying':>9}{'fixed':>8}{'spectral':>10}")
    for name, batch in shown.items():
        row = {"whole": round(grid_artifact_score(batch), 3), "varying": round(grid_artifact_score(varying(batch)), 3),
               "fixed_pattern": round(fixed_spread(batch) / fixed_spread(real), 3),
               "spectral": round(float(spectral_loss(batch[:half], real[half:2 * half])), 3)}
        found[name] = row
        print(f"{name:<40}{row['whole']:>8}{row['varying']:>9}{row['fixed_pattern']:>8}{row['spectral']:>10}")
    return found


PERIODS = (2, 4, 8, 16)


def syntheses(folders: list[Path]) -> dict[str, dict[str, list[float]]]:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    found = {}
    print(f"\n{'syntheses, by period ' + '/'.join(map(str, PERIODS)):<40}{'whole':>26}{'varying':>26}")
    for folder in folders:
        files = sorted(folder.glob("images/*/seed*_best.png"))
        if not files:
            raise SystemExit(f"--syntheses {folder}: no images/*/seed*_best.png; expected a visualize.py output folder")
        batch = torch.stack([pil_to_tensor(Image.open(f).convert("RGB")) for f in files]).float() / 255
        row = {kind: [round(grid_artifact_score(images, periods=(p,)), 2) for p in PERIODS]
               for kind, images in (("whole", batch), ("varying", varying(batch)))}
        found[str(folder)] = row
        print(f"{str(folder)[-40:]:<40}{str(row['whole']):>26}{str(row['varying']):>26}")
    return found


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", help="a task=generator checkpoint (with --encoder)")
    parser.add_argument("--encoder", help="the classifier checkpoint G was trained on")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--inits", type=int, default=3)
    parser.add_argument("--syntheses", type=Path, nargs="+", default=[],
                        help="visualize.py output folders whose saved syntheses to score by period")
    args = parser.parse_args()
    if bool(args.generator) != bool(args.encoder):
        parser.error("--generator and --encoder go together; expected both or neither")
    if args.images < 2 or args.inits < 1:
        parser.error(f"--images {args.images} --inits {args.inits}; expected at least 2 images and 1 init")
    figures = {"untrained": untrained(args.images, args.inits)}
    if args.generator:
        figures["trained"] = trained(args.generator, args.encoder, args.images)
    if args.syntheses:
        figures["syntheses"] = syntheses(args.syntheses)
    return figures


if __name__ == "__main__":
    print(json.dumps(main()))
