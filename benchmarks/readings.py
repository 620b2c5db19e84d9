"""How FeatureEvolution's reading of conv units (`spatial`) shows low-layer features.

    python benchmarks/readings.py [--data-root DIR] [--encoder C.ckpt] [--generator G.ckpt]
                                  [--generator-steps 400] [--readings mean center receptive]

One target (task=classifier seed=1) is trained once per reading with `callbacks=evolution` and
`callbacks.feature_evolution.spatial=<reading>`, the same data, seed and priors, so what differs
between the runs is only where each conv unit is read.  Units: six of conv1, two each of conv2,
conv3 and conv5, two classes.  Per reading and layer, from each run's evolution.json:

apart         grey RMS between two units' syntheses at the last frame (mean over pairs)
change        grey RMS between a unit's first and last frames
filter_own    for a layer affine in the image (conv1 read before its ReLU): the correlation between
              the patch the centre unit sees and the unit's own filter, at the last frame
filter_other  the same patch against the other units' filters of the layer: a synthesis that shows
              its own filter has filter_own far above filter_other

Priors not given are trained here: the encoder (task=classifier, also the judge of the runs) and
G (task=generator, --generator-steps steps).  --data-root DIR uses an ImageFolder tree
(benchmarks/mnist_folder.py, benchmarks/photo_folder.py) instead of the built-in shapes.  The last
line is one JSON object: {reading: {layer: {apart, change, filter_own, filter_other}}} and
`filter_gap_by_reading` (filter_own - filter_other of the first layer affine in the image: conv1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.evolution import best_checkpoint, train_py  # noqa: E402

UNITS = "[conv1:0,conv1:1,conv1:2,conv1:3,conv1:4,conv1:5,conv2:0,conv2:1,conv3:0,conv3:1,conv5:0,conv5:1,fc8:0,fc8:4]"
FIGURES = (("apart", "unit_difference"), ("change", "change"), ("filter_own", "filter_match"),
           ("filter_other", "filter_match_other"))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--encoder")
    parser.add_argument("--generator")
    parser.add_argument("--generator-steps", type=int, default=400)
    parser.add_argument("--readings", nargs="+", default=["mean", "center", "receptive"])
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-readings-"))
    print(f"runs in {out}")
    data = ["data=imagefolder", f"data.root={args.data_root.resolve()}"] if args.data_root else []
    encoder = args.encoder
    if not encoder:
        train_py(out / "encoder", "task=classifier", "logger=csv", *data)
        encoder = best_checkpoint(out / "encoder")
    generator = args.generator
    if not generator:
        train_py(out / "generator", "task=generator", f"encoder.ckpt={encoder}", "logger=csv",
                 f"task.train_steps={args.generator_steps}", *data)
        generator = str(out / "generator" / "checkpoints" / "last.ckpt")
    found: dict[str, dict] = {}
    for reading in args.readings:
        run = out / f"target-{reading}"
        train_py(run, "task=classifier", "seed=1", "logger=csv", "callbacks=evolution", *data,
                 f"callbacks.feature_evolution.generator.ckpt={generator}",
                 f"callbacks.feature_evolution.judge.ckpt={encoder}",
                 f"callbacks.feature_evolution.units={UNITS}", f"callbacks.feature_evolution.spatial={reading}")
        layers = json.loads((run / "evolution" / "evolution.json").read_text())["layers"]
        found[reading] = {layer: {name: v.get(key) for name, key in FIGURES} for layer, v in layers.items()}

    print(f"\n{'reading':<11}{'layer':<10}" + "".join(f"{name:>14}" for name, _ in FIGURES))
    for reading, layers in found.items():
        for layer, v in layers.items():
            print(f"{reading:<11}{layer:<10}" + "".join(f"{figure(v[name]):>14}" for name, _ in FIGURES))
    affine = {reading: [v for v in layers.values() if v["filter_own"] is not None] for reading, layers in found.items()}
    gaps = {reading: round(v[0]["filter_own"] - (v[0]["filter_other"] or 0.0), 4) if v else None
            for reading, v in affine.items()}
    return {**found, "filter_gap_by_reading": gaps, "data": str(args.data_root or "shapes")}


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    print(json.dumps(main()))
