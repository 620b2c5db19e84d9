"""Which of a generator's checkpoints would a synthesis figure pick?

    python benchmarks/selection.py --encoder E.ckpt --judge J.ckpt --generators RUN/checkpoints \
        --selectors S1.ckpt S2.ckpt S3.ckpt [--every 2] [--seeds 8]

For every `epoch*.ckpt` of a generator run (every `--every`-th), DGN-AM synthesizes every fc8 class
of the encoder x `--seeds` seeds; the judge and each selector classifier (independent networks of
the same classes, neither the judge nor in G's losses) say which share of the images shows its
class.  Selectors outside G's losses and the judge's seed ask whether checkpoint choice by
synthesis (rather than `val/agreement`) would pick what the judge likes.  One row per checkpoint;
the figures:

judge_best             the best judge transfer over the checkpoints
judge_last             the judge transfer of the last checkpoint
selected_by_mean       the judge transfer of the checkpoint the selectors' mean picks
selector_correlations  each selector's Pearson correlation with the judge over the checkpoints

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from featvis.checkpoints import load_classifier
from featvis.nets.adapters import fit_images
from featvis.synthesis.methods import load_method, method_config
from featvis.synthesis.synthesize import load_judge, synthesize


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="the classifier G was trained on (the target)")
    parser.add_argument("--judge", required=True)
    parser.add_argument("--generators", required=True, type=Path, help="a folder of epoch*.ckpt of task=generator")
    parser.add_argument("--selectors", required=True, nargs="+")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    target, record = load_classifier(args.encoder)
    classes = record["class_names"]
    paths = {"judge": args.judge, **{f"selector{k + 1}": path for k, path in enumerate(args.selectors)}}
    scorers = {name: load_judge(path, target=target).net.eval() for name, path in paths.items()}
    checkpoints = sorted(args.generators.glob("epoch*.ckpt"))[::args.every]
    if not checkpoints:
        raise SystemExit(f"--generators {args.generators} holds no epoch*.ckpt; expected a generator run's checkpoints")
    labels = torch.arange(len(classes)).repeat_interleave(args.seeds)
    rows = []
    print(f"{'checkpoint':<28}" + "".join(f"{name:>11}" for name in scorers))
    for path in checkpoints:
        method = load_method(method_config("dgn_am"), str(path), None, target.image_size)
        images = synthesize(target, list(range(len(classes))), method, layer="fc8", class_names=classes,
                            seeds=args.seeds, evaluation=False).images
        with torch.no_grad():
            row = {name: float((net(fit_images(images, net.image_size)).argmax(1) == labels).float().mean())
                   for name, net in scorers.items()}
        rows.append(row)
        print(f"{path.name:<28}" + "".join(f"{row[name]:>11.3f}" for name in scorers), flush=True)
    selectors = [name for name in scorers if name != "judge"]
    picked = max(rows, key=lambda r: sum(r[s] for s in selectors))
    judged = [r["judge"] for r in rows]
    return {"judge_best": round(max(judged), 3), "judge_last": round(judged[-1], 3),
            "selected_by_mean": round(picked["judge"], 3), "selected_checkpoint": checkpoints[rows.index(picked)].name,
            "selector_correlations": [round(statistics.correlation([r[s] for r in rows], judged), 2)
                                      if len(rows) > 2 else None for s in selectors]}


if __name__ == "__main__":
    print(json.dumps(main()))
