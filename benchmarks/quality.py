"""Quality of the methods on the tiny preset: every class unit of fc8, 8 seeds each.

    python benchmarks/quality.py [--encoder C.ckpt --comparator K.ckpt --generator G.ckpt --prior R.ckpt
                                  --judge J.ckpt] [--docs]

Checkpoints not given are trained first with the tiny preset: the classifier (also the
target), a comparator classifier (seed 2) whose features G's feature loss reads beside the
encoder's (task.comparators), G, the DAE prior, and the judge (another classifier: seed 1,
fc6 of 512; never seen by G or the sampler).  Prints a side-by-side table, then, as its last
line, one JSON object with, per method: <method>_judge_transfer,
<method>_beats_real_top1 (fraction of units whose median synthesis beats the unit's top-1
real validation image), <method>_diversity, <method>_kid; ppgn_diversity_ratio (PPGN
diversity / DGN-AM diversity); and judge_real_accuracy, judge_reconstruction_accuracy: the
judge's accuracy on 1000 real validation images and on G's reconstructions of them, G(E(x)),
the ceiling of the code methods' judge transfer (per class in the table); real_diversity,
reconstruction_diversity: the diversity of as many real images (and of their reconstructions)
per class as seeds, the scale the methods' diversity is read against.  Targets: dgn_am
and ppgn judge transfer and beats_real_top1 >= 0.90, ppgn_diversity_ratio >= 1.5 while PPGN
transfer stays >= 0.90.
--docs writes the contact sheet (rows = methods, columns = classes) to docs/methods.png.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from featvis.checkpoints import load_classifier, load_generator
from featvis.data import ShapesDataModule
from featvis.nets.adapters import fit_images
from featvis.nets.encoder import Encoder
from featvis.reports.grids import labelled_grid, save_png
from featvis.run import train
from featvis.synthesis.evaluation import JudgeFeatures, per_class_diversity, reconstruction_transfer
from featvis.visualize import visualize

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["pixel_noprior", "pixel", "pixel_fft", "dgn_am", "ppgn"]


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def trained(out: Path, *overrides: str) -> str:
    return train(compose_cfg("config", f"output_dir={out}", "logger=csv", *overrides))["best_checkpoint"]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("encoder", "generator", "prior", "judge"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--comparator", help="a classifier for G's feature loss; used only when G is trained here")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--docs", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS,
                        help="a subset of the methods (default: all); the ratio needs dgn_am and ppgn")
    args = parser.parse_args()
    if args.comparator and args.comparator == args.judge:
        parser.error(f"--comparator {args.comparator} is the judge; expected another classifier (the judge "
                     "must be independent of G)")
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-quality-"))
    encoder = args.encoder or trained(out / "classifier", "task=classifier")
    comparator = args.comparator
    if not (args.generator or comparator):
        comparator = trained(out / "comparator", "task=classifier", "seed=2")
    generator = args.generator or trained(out / "generator", "task=generator", f"encoder.ckpt={encoder}",
                                          f"task.comparators=[{comparator}]")
    prior = args.prior or trained(out / "prior", "task=prior", f"encoder.ckpt={encoder}")
    judge = args.judge or trained(out / "judge", "task=classifier", "seed=1", "model.fc6_dim=512")

    figures: dict[str, float] = {}
    ceiling = judge_on_reconstructions(encoder, generator, judge, args.seeds)
    for name in ("real", "reconstruction"):
        figures[f"judge_{name}_accuracy"] = round(ceiling[name]["overall"], 4)
        figures[f"{name}_diversity"] = round(ceiling[name]["diversity"], 4)
    sheet_rows, table = [], []
    methods = [m for m in METHODS if m in args.methods]
    for method in methods:
        start = time.perf_counter()
        summary = visualize(compose_cfg(
            "visualize", f"method={method}", f"output_dir={out / method}", f"target.ckpt={encoder}",
            f"generator.ckpt={generator}", f"prior.ckpt={prior}", f"judge.ckpt={judge}",
            f"units=[{','.join(str(u) for u in range(15))}]", f"seeds={args.seeds}", "gif=false",
            "evaluation.real_images=1000"))
        seconds = time.perf_counter() - start
        ev = summary["evaluation"]
        figures[f"{method}_judge_transfer"] = round(ev["judge_transfer"], 4)
        figures[f"{method}_beats_real_top1"] = round(ev["beats_real_top1"], 4)
        figures[f"{method}_diversity"] = round(ev["diversity"], 4)
        figures[f"{method}_kid"] = round(ev["kid_mean"], 4)
        table.append((method, ev["judge_transfer"], ev["beats_real_top1"], ev["diversity"], ev["kid_mean"], seconds))
        firsts = [r["files"]["best"] for r in summary["results"] if r["seed"] == 0]
        sheet_rows.append(torch.stack([_load(out / method / f) for f in firsts]))
    if {"ppgn", "dgn_am"} <= set(methods):
        figures["ppgn_diversity_ratio"] = round(figures["ppgn_diversity"] / max(figures["dgn_am_diversity"], 1e-12), 3)

    classes = [r["unit"].split(" ", 1)[-1] for r in summary["results"] if r["seed"] == 0]
    sheet = labelled_grid(torch.cat(sheet_rows), len(methods), methods, [c.replace(" ", "\n") for c in classes])
    sheet_path = save_png(sheet, (ROOT / "docs" / "methods.png") if args.docs else out / "methods.png")

    print(f"\n{'method':<15}{'judge transfer':>15}{'beats top-1':>13}{'diversity':>11}{'KID':>9}{'seconds':>9}")
    for method, transfer, beats, diversity, kid, seconds in table:
        print(f"{method:<15}{transfer:>15.3f}{beats:>13.3f}{diversity:>11.3f}{kid:>9.4f}{seconds:>9.1f}")
    for name, label in (("real", "real images"), ("reconstruction", "G(E(x))")):
        print(f"{label:<15}{ceiling[name]['overall']:>15.3f}{'-':>13}{ceiling[name]['diversity']:>11.3f}"
              f"{'-':>9}{'-':>9}")
    print(f"\njudge accuracy on real images {ceiling['real']['overall']:.3f}, on G(E(x)) "
          f"{ceiling['reconstruction']['overall']:.3f}; per class on G(E(x)):")
    print("  ".join(f"{c}: {a:.2f}" for c, a in zip(classes, ceiling["reconstruction"]["per_class"])))
    print(f"ppgn_diversity_ratio {figures.get('ppgn_diversity_ratio')}  (contact sheet: {sheet_path}; runs: {out})")
    return figures


def judge_on_reconstructions(encoder_ckpt: str, generator_ckpt: str, judge_ckpt: str, per_class: int) -> dict:
    """The judge on real validation images and on G(E(x)): accuracy, and diversity per `per_class` images."""
    generator, _, record = load_generator(generator_ckpt)
    net, classifier = load_classifier(encoder_ckpt)
    encoder = Encoder(net, code_layer=record["encoder"]["code_layer"])
    judge, _ = load_classifier(judge_ckpt)
    data = ShapesDataModule(image_size=net.image_size, val_size=1000)
    data.setup("validate")
    found = reconstruction_transfer(generator, encoder, judge, data.val_dataloader(),
                                    num_classes=len(classifier["class_names"]))
    # reconstruct only the images the diversity reads: the first `per_class` of each class
    images, labels = (torch.cat(parts) for parts in zip(*data.val_dataloader()))
    keep = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in labels.unique().tolist()])
    images, labels = images[keep], labels[keep]
    features = JudgeFeatures(judge, compose_cfg("visualize").judge.feature_layer)
    with torch.no_grad():
        reconstructions = generator(encoder.code(fit_images(images, encoder.image_size))).clamp(0, 1)
    for name, shown in (("real", images), ("reconstruction", reconstructions)):
        found[name]["diversity"] = float(per_class_diversity(features(shown), labels, per_class).mean())
    return found


def _load(path: Path) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(Image.open(path).convert("RGB")).float() / 255


if __name__ == "__main__":
    print(json.dumps(main()))
