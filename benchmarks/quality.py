"""Quality of the methods on the tiny preset: every class unit of fc8, 8 seeds each, over fresh
checkpoint sets.

    python benchmarks/quality.py [--repeats N] [--first-set K] [--data-root DIR] [--seeds 8]
                                 [--methods ...] [--docs] [--generator-override KEY=VALUE ...]
                                 [--code-method-override KEY=VALUE ...] [--method-override M:KEY=VALUE ...]
    python benchmarks/quality.py --encoder C.ckpt --generator G.ckpt --prior R.ckpt --judge J.ckpt
    python benchmarks/quality.py --selection [--generator-seeds 3] --methods dgn_am [--repeats 2]

Each repeat trains one independent checkpoint set, with its own seed for every network: the
classifier (also the target), a comparator classifier whose features G's feature loss reads
beside the encoder's (task.comparators), G, the DAE prior, and the judge (another classifier,
fc6 of 512; never seen by G or the sampler).  Repeat r uses seeds 100 r (+1 judge, +2
comparator), so repeat 0 is the set earlier versions trained; --first-set K numbers the sets
from K, so two processes (or machines) with --first-set 0 and 1 train the sets of --repeats 2.
Checkpoints given on the command line replace the trained ones (one set, --repeats 1).
--data-root DIR runs everything on an ImageFolder tree (DIR/train/<class>/*, DIR/val/<class>/*)
instead of the built-in shapes; the judge is then a classifier of that data too.  When only pixel
methods are asked for (and lucent), no comparator, G or DAE is trained, and the G(E(x)) row is left out.
`lucent` (in the default list where torch-lucent 0.1.8 is installed) is lucent's default render of
the same target, judged the same way: the reference the pixel methods are held to.

Prints, per set, a table of the methods beside two reference rows (real images and G's
reconstructions G(E(x))), then the worst case over the sets, and as its last line one JSON
object: the worst case of every figure (the minimum, or the maximum for figures where lower is
better: KID, grid artefacts, minutes) and `repeats`, the list of each set's figures.  Per method:
<method>_judge_transfer, <method>_beats_real_top1 (fraction of units whose median synthesis
beats the unit's top-1 real validation image), <method>_diversity, <method>_kid,
<method>_grid_artifact, <method>_path_similarity (the activation-path check of Geirhos et al. 2024:
Spearman correlation over each layer's channels, conv1..fc7, between a synthesis's activations and
the mean of its class's real images, averaged over layers; real_path_similarity is a real
hold-out's own, the ceiling).  And: judge_real_accuracy, judge_reconstruction_accuracy (the judge on
1000 real validation images and on G(E(x)), the ceiling of the code methods' judge transfer);
real_diversity, reconstruction_diversity (as many real images, or reconstructions, per class as
seeds: the scale of the methods' diversity); ppgn_diversity_vs_reconstruction (PPGN diversity /
G(E(x)) diversity); judge_confidence_real, _random_codes, _dae_codes (the judge's mean
max-probability on real images, on G of codes drawn from the code statistics, and on G of those
codes after 10 applications of the DAE's denoiser); real_grid_artifact,
reconstruction_grid_artifact and grid_artifact_ratio (the larger of dgn_am's and ppgn's grid
artefact score / the real images'; see featvis.synthesis.evaluation.grid_artifact_score);
generator_train_minutes (when G is trained here); <method>_seed_spread_vs_real (its diversity / the
real images'); pixel_fft_transfer_vs_lucent, pixel_maco_transfer_vs_lucent (judge transfer minus lucent's).

Targets on shapes, worst case over --repeats 2: judge_reconstruction_accuracy >= 0.95, dgn_am and
ppgn judge transfer and beats_real_top1 >= 0.90, ppgn_diversity_vs_reconstruction >= 0.80 with
ppgn transfer >= 0.90, grid_artifact_ratio <= 1.5, generator_train_minutes <= 15.
pixel_maco (MACO, Fel et al. 2023) against pixel_fft: pixel_maco_transfer_vs_fft (the difference
of judge transfers) >= 0 and pixel_maco_kid_vs_fft (the ratio of KIDs) < 1; both against lucent:
pixel_*_transfer_vs_lucent >= 0.  On real folders: ppgn_seed_spread_vs_real >= 0.5.
--methods also takes the variants dgn_am+diversity, ppgn+diversity (method.objective.diversity=2) and
dgn_am+multifaceted, ppgn+multifaceted (method=dgn_am_multifaceted, ppgn_multifaceted), reported beside the plain ones
with <variant>_diversity_gain (its diversity / the plain method's) and <variant>_transfer_change
(its judge transfer - the plain method's); targets for ppgn+multifaceted: >= 1.2 and >= -0.05.
--selection trains, per set, two selector classifiers (seeds 100 r + 3, + 4) and --generator-seeds K
G runs (seeds 100 r, 100 r + 51, + 52, ...) with GeneratorSelection on and every validation kept; each
G run is measured on the checkpoint today's monitor (val/loss_feature) keeps and on the one
val/selection keeps: generator_selection_transfer_gain (target >= 0) is the worst DGN-AM judge
transfer over the G seeds with the selected G minus that with today's, and
generator_selection_minutes the selection's own minutes in the longest G run.
--docs writes the first set's contact sheet (rows = methods, columns = classes) to docs/methods.png.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from featvis.checkpoints import load_classifier, load_generator, load_prior
from featvis.nets.adapters import fit_images
from featvis.nets.encoder import Encoder
from featvis.io import save_png
from featvis.reports.grids import labelled_grid
from featvis.jobs.train import step_budget, train
from featvis.synthesis.evaluation import JudgeFeatures, grid_artifact_score
from featvis.jobs.visualize import visualize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared checks live in tests/
from tests.checks import judge_misreadings, per_class_diversity, reconstruction_transfer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["pixel_noprior", "pixel", "pixel_fft", "pixel_maco", "dgn_am", "ppgn"]
# Variants "<method>+<name>" (only when asked for with --methods): the overrides that make them.
VARIANTS = {"diversity": lambda plain: [f"method={plain}", "method.objective.diversity=2.0"],
            "multifaceted": lambda plain: [f"method={plain}_multifaceted"]}
# lucent's default render (torch-lucent 0.1.8, not a featvis dependency) on the same target: the
# reference the pixel methods are held to; in the default list when lucent is installed.
LUCENT_INSTALL = "pip install --no-deps torch-lucent==0.1.8 kornia==0.4.1 && pip install decorator ipython"
CHOICES = [*METHODS, *(f"{m}+{v}" for m in ("dgn_am", "ppgn") for v in VARIANTS), "lucent"]
CODE_METHODS = ("dgn_am", "ppgn")
CHECKPOINTS = ("encoder", "generator", "prior", "judge")
LOWER_IS_BETTER = ("_kid", "grid_artifact", "grid_artifact_ratio", "_minutes", "_kid_vs_fft")
TARGETS = {"judge_reconstruction_accuracy": ">= 0.95", "dgn_am_judge_transfer": ">= 0.90",
           "ppgn_judge_transfer": ">= 0.90", "dgn_am_beats_real_top1": ">= 0.90",
           "ppgn_beats_real_top1": ">= 0.90", "ppgn_diversity_vs_reconstruction": ">= 0.80",
           "ppgn_seed_spread_vs_real": ">= 0.5 (real folders)",
           "grid_artifact_ratio": "<= 1.5", "generator_train_minutes": "<= 15",
           "pixel_maco_transfer_vs_fft": ">= 0", "pixel_maco_kid_vs_fft": "< 1",
           "pixel_fft_transfer_vs_lucent": ">= 0", "pixel_maco_transfer_vs_lucent": ">= 0",
           "ppgn+multifaceted_diversity_gain": ">= 1.2", "ppgn+multifaceted_transfer_change": ">= -0.05",
           "generator_selection_transfer_gain": ">= 0", "generator_selection_minutes": "<= 20 with G's minutes"}


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def trained(out: Path, *overrides: str) -> str:
    return train(compose_cfg("config", f"output_dir={out}", "logger=csv", *overrides))["best_checkpoint"]


def kept_by(out: Path, monitor: str, mode: str, end: int | None = None) -> str:
    """The checkpoint ModelCheckpoint would keep by `monitor` (`mode` min or max) from a G run that
    kept every validation (save_top_k=-1): the best value among the validations up to step `end`
    (None: all), the first of equals."""
    rows = [r for r in csv.DictReader(next(out.rglob("metrics.csv")).open()) if r.get(monitor)]
    sign = 1.0 if mode == "max" else -1.0
    # one checkpoint a validation, its file named by its step: in step order, as the rows
    kept = sorted((out / "checkpoints").glob("epoch*-step*.ckpt"))
    if len(rows) != len(kept):
        raise SystemExit(f"{out}: {len(rows)} validations logged {monitor} and {len(kept)} checkpoints were kept; "
                         "expected one checkpoint a validation")
    value = {int(p.stem.rsplit("step", 1)[1]): (sign * float(r[monitor]), p) for r, p in zip(rows, kept)}
    best = max([s for s in value if end is None or s <= end] or [min(value)], key=lambda s: (value[s][0], -s))
    return str(value[best][1])


def generators_by_budget(out: Path, budgets: list[int], cfg) -> dict[int, str]:
    """The checkpoint a G run of each budget would keep, from one run of the largest budget that
    kept every validation: the best `task.monitor` among the validations up to the budget's end (as
    step_budget rounds it)."""
    return {budget: kept_by(out, cfg.task.monitor, cfg.task.monitor_mode,
                            step_budget(OmegaConf.merge(cfg, {"task": {"train_steps": budget}}))["max_steps"])
            for budget in budgets}


def generator_seeds(repeat: int, count: int) -> list[int]:
    """G's seeds in set `repeat`: the set's own (100 r), then 100 r + 51, + 52, ..."""
    return [100 * repeat, *(100 * repeat + 50 + k for k in range(1, count))]


def selection_runs(out: Path, repeat: int, data: list[str], checkpoints: dict[str, str], comparator: str,
                   generator_overrides: list[str], count: int) -> list[dict]:
    """`count` G runs of set `repeat` (its seeds: generator_seeds) with GeneratorSelection on (two
    selector classifiers, seeds 100 r + 3 and + 4) and every validation kept; per run, the
    checkpoint today's monitor keeps and the one val/selection keeps."""
    seed = 100 * repeat
    selectors = [trained(out / f"selector{k}", "task=classifier", f"seed={seed + k}", *data) for k in (3, 4)]
    runs = []
    for g_seed in generator_seeds(repeat, count):
        folder = out / f"generator-seed{g_seed}"
        cfg = compose_cfg("config", f"output_dir={folder}", "logger=csv", "task=generator", f"seed={g_seed}", *data,
                          f"encoder.ckpt={checkpoints['encoder']}", f"task.comparators=[{comparator}]",
                          f"task.selectors=[{','.join(selectors)}]", "callbacks.model_checkpoint.save_top_k=-1",
                          *generator_overrides)
        start = time.perf_counter()
        train(cfg)
        minutes = (time.perf_counter() - start) / 60
        rows = [r for r in csv.DictReader(next(folder.rglob("metrics.csv")).open()) if r.get("val/selection_seconds")]
        runs.append({"seed": g_seed, "minutes": minutes, "selection_minutes": float(rows[-1]["val/selection_seconds"]) / 60,
                     "monitor": kept_by(folder, cfg.task.monitor, cfg.task.monitor_mode),
                     "selection": kept_by(folder, "val/selection", "max")})
    return runs


def checkpoint_set(out: Path, repeat: int, data: list[str], given: dict[str, str | None],
                   comparator: str | None, generator_overrides: list[str],
                   budgets: list[int], priors: bool = True,
                   generator: bool = True) -> tuple[dict[str, str], dict[int, str], float | None]:
    """One independent set of checkpoints (seeds 100 * repeat + ...), G's checkpoint for each of
    `budgets` (G steps; none: the configured budget alone) and G's training minutes.  Without
    `priors` (only pixel methods asked for) no comparator, G or DAE is trained; without
    `generator` (selection_runs trains G) the comparator is but G is not."""
    seed = 100 * repeat
    found = dict(given)
    found["encoder"] = given["encoder"] or trained(out / "classifier", "task=classifier", f"seed={seed}", *data)
    minutes, by_budget = None, {}
    if not priors:
        found["judge"] = given["judge"] or trained(out / "judge", "task=classifier", f"seed={seed + 1}",
                                                   "model.fc6_dim=512", *data)
        return found, by_budget, minutes
    if not given["generator"]:
        comparator = comparator or trained(out / "comparator", "task=classifier", f"seed={seed + 2}", *data)
        found["comparator"] = comparator
    if not given["generator"] and generator:
        every_epoch = [f"task.train_steps={max(budgets)}", "callbacks.model_checkpoint.save_top_k=-1"] if budgets else []
        cfg = compose_cfg("config", f"output_dir={out / 'generator'}", "logger=csv", "task=generator",
                          f"seed={seed}", *data, f"encoder.ckpt={found['encoder']}",
                          f"task.comparators=[{comparator}]", *generator_overrides, *every_epoch)
        start = time.perf_counter()
        result = train(cfg)
        minutes = (time.perf_counter() - start) / 60
        found["generator"] = result["best_checkpoint"]
        if budgets:
            by_budget = generators_by_budget(out / "generator", budgets, cfg)
    found["prior"] = given["prior"] or trained(out / "prior", "task=prior", f"seed={seed}", *data,
                                               f"encoder.ckpt={found['encoder']}")
    found["judge"] = given["judge"] or trained(out / "judge", "task=classifier", f"seed={seed + 1}",
                                               "model.fc6_dim=512", *data)
    return found, by_budget, minutes


def selection_figures(out: Path, repeat: int, data: list[str], checkpoints: dict[str, str], args,
                      methods: list[str], method_overrides: dict[str, list[str]]) -> dict[str, float]:
    """Set `repeat`'s G runs with GeneratorSelection (selection_runs), each measured on the G that
    today's monitor keeps and on the G that val/selection keeps (once where they are the same):
    the worst case over the G seeds of the selected G's figures, and per code method
    <method>_selection_transfer_gain (dgn_am's: generator_selection_transfer_gain), the worst
    judge transfer over the seeds with the selected G minus that with today's."""
    runs = selection_runs(out, repeat, data, checkpoints, checkpoints["comparator"], args.generator_override,
                          args.generator_seeds)
    measured: dict[str, dict[str, float]] = {}

    def figures_of(path: str) -> dict[str, float]:
        if path not in measured:
            print(f"\n-- G {path}")
            measured[path], _ = measure({**checkpoints, "generator": path}, out / f"measured{len(measured)}", data,
                                        args.seeds, methods, args.code_method_override, method_overrides)
        return measured[path]

    pairs = [(run, figures_of(run["monitor"]), figures_of(run["selection"])) for run in runs]
    code_methods = [m for m in CODE_METHODS if m in methods]
    print(f"\n{'G seed':<8}{'kept by':<18}{'checkpoint':<28}" + "".join(f"{m + ' transfer':>17}" for m in code_methods)
          + f"{'G minutes':>11}{'selecting':>11}")
    for run, today, chosen in pairs:
        for label, path, figures in (("val/loss_feature", run["monitor"], today), ("val/selection", run["selection"], chosen)):
            print(f"{run['seed']:<8}{label:<18}{Path(path).name:<28}"
                  + "".join(f"{figures[f'{m}_judge_transfer']:>17.3f}" for m in code_methods)
                  + f"{run['minutes']:>11.2f}{run['selection_minutes']:>11.2f}")
    found = worst_case([chosen for _, _, chosen in pairs])
    for method in code_methods:
        key = f"{method}_judge_transfer"
        gain = min(c[key] for _, _, c in pairs) - min(t[key] for _, t, _ in pairs)
        found["generator_selection_transfer_gain" if method == "dgn_am" else f"{method}_selection_transfer_gain"] = round(gain, 4)
        found[f"monitor_{key}"] = min(t[key] for _, t, _ in pairs)
    found["generator_train_minutes"] = round(max(run["minutes"] for run in runs), 2)
    found["generator_selection_minutes"] = round(max(run["selection_minutes"] for run in runs), 2)
    return found


def measure(checkpoints: dict[str, str], out: Path, data: list[str], seeds: int, methods: list[str],
            code_overrides: list[str] = (), method_overrides: dict[str, list[str]] | None = None,
            ) -> tuple[dict[str, float], torch.Tensor]:
    """Every figure of one checkpoint set, its printed table, and its contact sheet."""
    figures: dict[str, float] = {}
    method_overrides = method_overrides or {}
    reference = reference_rows(checkpoints, data, seeds)
    references = [name for name in ("real", "reconstruction") if name in reference]
    for name in references:
        figures[f"judge_{name}_accuracy"] = round(reference[name]["overall"], 4)
        figures[f"{name}_diversity"] = round(reference[name]["diversity"], 4)
        figures[f"{name}_grid_artifact"] = round(reference[name]["grid_artifact"], 3)
    for name, value in reference["confidence"].items():
        figures[f"judge_confidence_{name}"] = round(value, 4)
    classes = reference["classes"]
    sheet_rows, table, paths, misreadings = [], [], {}, {}
    for method in methods:
        start = time.perf_counter()
        if method == "lucent":
            ev, firsts = lucent_render(checkpoints, data, len(classes), seeds)
        else:
            ev, firsts = featvis_render(method, checkpoints, out, data, len(classes), seeds,
                                        [*(code_overrides if method.partition("+")[0] in CODE_METHODS else []),
                                         *method_overrides.get(method, [])])
        seconds = time.perf_counter() - start
        row = {"judge_transfer": ev["judge_transfer"], "beats_real_top1": ev["beats_real_top1"],
               "diversity": ev["diversity"], "kid": ev["kid_mean"], "grid_artifact": ev["grid_artifact"],
               "path_similarity": ev["path_similarity_mean"]}
        figures.update({f"{method}_{k}": round(v, 4) for k, v in row.items()})
        figures["real_path_similarity"] = round(ev["real_path_similarity_mean"], 4)
        paths[method], real_path = ev["path_similarity"], ev["real_path_similarity"]
        table.append((method, row, seconds))
        misreadings[method] = ", ".join(judge_misreadings(ev["per_unit"], classes))
        sheet_rows.append(firsts)
    for method in methods:  # the spread of a unit's seeds against as many real images of its class
        figures[f"{method}_seed_spread_vs_real"] = round(
            figures[f"{method}_diversity"] / max(figures["real_diversity"], 1e-12), 3)
    if "ppgn" in methods and "reconstruction_diversity" in figures:
        figures["ppgn_diversity_vs_reconstruction"] = round(
            figures["ppgn_diversity"] / max(figures["reconstruction_diversity"], 1e-12), 3)
    if {"pixel_fft", "pixel_maco"} <= set(methods):
        figures["pixel_maco_transfer_vs_fft"] = round(
            figures["pixel_maco_judge_transfer"] - figures["pixel_fft_judge_transfer"], 4)
        figures["pixel_maco_kid_vs_fft"] = round(
            figures["pixel_maco_kid"] / max(figures["pixel_fft_kid"], 1e-12), 3)
    for method in methods:  # a variant against its plain method: diversity gained, transfer changed
        plain, _, variant = method.partition("+")
        if variant and plain in methods:
            figures[f"{method}_diversity_gain"] = round(
                figures[f"{method}_diversity"] / max(figures[f"{plain}_diversity"], 1e-12), 3)
            figures[f"{method}_transfer_change"] = round(
                figures[f"{method}_judge_transfer"] - figures[f"{plain}_judge_transfer"], 4)
    for method in ("pixel_fft", "pixel_maco"):
        if {method, "lucent"} <= set(methods):
            figures[f"{method}_transfer_vs_lucent"] = round(
                figures[f"{method}_judge_transfer"] - figures["lucent_judge_transfer"], 4)
    code_methods = [m for m in CODE_METHODS if m in methods]
    if code_methods:
        figures["grid_artifact_ratio"] = round(
            max(figures[f"{m}_grid_artifact"] for m in code_methods) / figures["real_grid_artifact"], 3)

    print(f"\n{'method':<20}{'judge transfer':>15}{'beats top-1':>13}{'diversity':>11}{'KID':>9}"
          f"{'grid':>8}{'path':>7}{'seconds':>9}")
    for method, row, seconds in table:
        print(f"{method:<20}{row['judge_transfer']:>15.3f}{row['beats_real_top1']:>13.3f}"
              f"{row['diversity']:>11.3f}{row['kid']:>9.4f}{row['grid_artifact']:>8.2f}"
              f"{row['path_similarity']:>7.3f}{seconds:>9.1f}")
    labels = {"real": "real images", "reconstruction": "G(E(x))"}
    for name in references:
        label = labels[name]
        print(f"{label:<20}{reference[name]['overall']:>15.3f}{'-':>13}{reference[name]['diversity']:>11.3f}"
              f"{'-':>9}{reference[name]['grid_artifact']:>8.2f}"
              + (f"{figures['real_path_similarity']:>7.3f}" if name == "real" and paths else f"{'-':>7}") + f"{'-':>9}")
    if paths:  # the activation-path check per layer (Spearman over channels against real images)
        layers = list(next(iter(paths.values())))
        print(f"\n{'activation path':<20}" + "".join(f"{layer:>8}" for layer in layers))
        for name, by_layer in [*paths.items(), ("real hold-out", real_path)]:
            print(f"{name:<20}" + "".join(f"{by_layer[layer]:>8.3f}" for layer in layers))
    for name in references:
        print(f"judge accuracy per class on {labels[name]}: "
              + "  ".join(f"{c}: {a:.2f}" for c, a in zip(classes, reference[name]["per_class"])))
    for method, misread in misreadings.items():
        print(f"{method}: syntheses the judge reads as another class: {misread or 'none'}")
    print("judge confidence (mean max-probability): "
          + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in reference["confidence"].items()))
    sheet = labelled_grid(torch.cat(sheet_rows), len(methods), methods, [c.replace(" ", "\n") for c in classes])
    return figures, sheet


def featvis_render(method: str, checkpoints: dict[str, str], out: Path, data: list[str], units: int,
                   seeds: int, overrides: list[str]) -> tuple[dict, torch.Tensor]:
    """visualize.py's run of `method` (or a variant) on every class unit: its evaluation and the
    first seed's image of each unit."""
    name, _, variant = method.partition("+")
    priors = [f"{key}.ckpt={checkpoints[key]}" for key in ("generator", "prior") if checkpoints.get(key)]
    summary = visualize(compose_cfg(
        "visualize", *(VARIANTS[variant](name) if variant else [f"method={name}"]), *overrides,
        f"output_dir={out / method}", *data, f"target.ckpt={checkpoints['encoder']}", *priors,
        f"judge.ckpt={checkpoints['judge']}", f"units=[{','.join(str(u) for u in range(units))}]",
        f"seeds={seeds}", "gif=false", "evaluation.real_images=1000"))
    firsts = [r["files"]["best"] for r in summary["results"] if r["seed"] == 0]
    return summary["evaluation"], torch.stack([_load(out / method / f) for f in firsts])


def lucent_render(checkpoints: dict[str, str], data: list[str], units: int, seeds: int) -> tuple[dict, torch.Tensor]:
    """lucent 0.1.8's default render (`render_vis`: a Fourier, colour-decorrelated image, its
    standard transforms, Adam at lr 0.05 for 512 steps) of every class logit of the target, `seeds`
    images each (one batch, unit-major, each its own random start; the transforms are shared by
    the batch, as lucent draws them), evaluated as visualize.py evaluates a synthesis."""
    from lucent.optvis import param, render

    from featvis.jobs.visualize import path_layers
    from featvis.synthesis.evaluation import evaluate
    from featvis.synthesis.objectives import Term
    from featvis.synthesis.real import RealImages
    from featvis.synthesis.synthesize import logits_layer_of

    target, _ = load_classifier(checkpoints["encoder"])
    judge, _ = load_classifier(checkpoints["judge"])
    target.eval()

    class Logits(torch.nn.Module):  # lucent names the layers it reads by module attribute
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net, self.logits = net, torch.nn.Identity()

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.logits(self.net(images))

    wanted = torch.arange(units).repeat_interleave(seeds)
    rows = torch.arange(len(wanted))
    torch.manual_seed(0)
    images = render.render_vis(
        Logits(target).eval(), lambda hook: -hook("logits")[rows, wanted].sum(),
        lambda: param.image(target.image_size, batch=len(wanted)), preprocess=False,
        fixed_image_size=target.image_size, show_image=False, progress=False)[-1]
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float().clamp(0, 1)
    with torch.no_grad():
        activations = target(images)[rows, wanted]
    data_cfg = compose_cfg("visualize", *data).data
    datamodule = instantiate(data_cfg, image_size=target.image_size,
                             **({"val_size": 1000} if "val_size" in data_cfg else {}))
    datamodule.setup("validate")
    layer = logits_layer_of(target)
    report = evaluate(target, judge, [Term(layer, u) for u in range(units)], images, activations, seeds,
                      RealImages(datamodule.val_dataloader(), target.image_size, 1000),
                      judge_classes_match=True, max_real=1000, path_layers=path_layers("auto", target),
                      class_units=[True] * units)
    return report, images[::seeds]


def reference_rows(checkpoints: dict[str, str], data: list[str], per_class: int) -> dict:
    """The judge on real validation images and, when the set has G, on G(E(x)): accuracy,
    diversity per `per_class` images, grid artefacts; and its confidence on real images and on G
    of drawn codes."""
    net, classifier = load_classifier(checkpoints["encoder"])
    judge, _ = load_classifier(checkpoints["judge"])
    num_classes = len(classifier["class_names"])
    data_cfg = compose_cfg("visualize", *data).data
    fewer = {"val_size": 1000} if "val_size" in data_cfg else {}
    datamodule = instantiate(data_cfg, image_size=net.image_size, **fewer)
    datamodule.setup("validate")
    images, labels = (torch.cat(parts)[:1000] for parts in zip(*datamodule.val_dataloader()))
    # the diversity reads only the first `per_class` images of each class
    keep = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in labels.unique().tolist()])
    features = JudgeFeatures(judge, compose_cfg("visualize").judge.feature_layer)
    judge = judge.eval()

    def confidence(shown: torch.Tensor) -> float:
        return float(judge(fit_images(shown, judge.image_size)).softmax(1).max(1).values.mean())

    with torch.no_grad():
        predicted = torch.cat([judge(fit_images(part, judge.image_size)).argmax(1) for part in images.split(250)])
    found = {"real": {"overall": float((predicted == labels).float().mean()),
                      "per_class": [float((predicted[labels == c] == c).float().mean()) for c in range(num_classes)]}}
    shown = {"real": images[keep]}
    with torch.no_grad():
        found["confidence"] = {"real": confidence(images[keep])}
    if checkpoints.get("generator"):
        generator, stats, record = load_generator(checkpoints["generator"])
        dae, _, _ = load_prior(checkpoints["prior"])
        encoder = Encoder(net, code_layer=record["encoder"]["code_layer"])
        found.update(reconstruction_transfer(generator, encoder, judge, datamodule.val_dataloader(),
                                             num_classes=num_classes))
        with torch.no_grad():
            shown["reconstruction"] = generator(encoder.code(fit_images(images[keep], encoder.image_size))).clamp(0, 1)
            drawn = stats.sample(len(keep), torch.Generator(device="cpu").manual_seed(0))
            denoised = drawn
            for _ in range(10):
                denoised = dae(denoised).clamp(min=0)  # codes are rectified, like E's
            found["confidence"].update(random_codes=confidence(generator(drawn).clamp(0, 1)),
                                       dae_codes=confidence(generator(denoised).clamp(0, 1)))
    for name, these in shown.items():
        found[name]["diversity"] = float(per_class_diversity(features(these), labels[keep], per_class).mean())
    found["real"]["grid_artifact"] = grid_artifact_score(images)
    if "reconstruction" in shown:
        found["reconstruction"]["grid_artifact"] = grid_artifact_score(shown["reconstruction"])
    found["classes"] = list(classifier["class_names"])
    return found


def worst_case(sets: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's worst value over the sets: the maximum where lower is better, else the minimum."""
    keys = [k for k in sets[0] if all(k in s and isinstance(s[k], (int, float)) for s in sets)]
    return {k: (max if k.endswith(LOWER_IS_BETTER) else min)(s[k] for s in sets) for k in keys}


def _load(path: Path) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(Image.open(path).convert("RGB")).float() / 255


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in CHECKPOINTS:
        parser.add_argument(f"--{name}")
    parser.add_argument("--comparator", help="a classifier for G's feature loss; used only when G is trained here")
    parser.add_argument("--repeats", type=int, default=1, help="independent checkpoint sets (default 1)")
    parser.add_argument("--first-set", type=int, default=0, metavar="K",
                        help="number the sets from K (seeds 100 K+): spreads --repeats over processes or machines")
    parser.add_argument("--generator-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a train.py override for G's training only (repeatable), e.g. "
                             "generator.net.stages=[[128,128],[64,0],[32,0],[16,0]]")
    parser.add_argument("--code-method-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a visualize.py override for the code methods (dgn_am, ppgn and their "
                             "variants) only (repeatable), e.g. method.step.jitter=2")
    parser.add_argument("--method-override", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a visualize.py override for one method only (repeatable), e.g. "
                             "pixel_maco:method.step.lr=0.2")
    parser.add_argument("--data-root", help="an ImageFolder tree (train/ and val/) instead of shapes")
    parser.add_argument("--budgets", type=int, nargs="+", default=[], metavar="STEPS",
                        help="G step budgets to compare (one G run of the largest keeps every validation; "
                             "each budget's figures come from the checkpoint a run of that length keeps)")
    parser.add_argument("--selection", action="store_true",
                        help="train G with GeneratorSelection (two selector classifiers a set) and measure the G it "
                             "keeps against the G today's monitor keeps: generator_selection_transfer_gain")
    parser.add_argument("--generator-seeds", type=int, default=3, metavar="K",
                        help="with --selection: G runs a set, seeds 100 r, 100 r + 51, + 52, ... (default 3)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--docs", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=CHOICES, default=None,
                        help="a subset of the methods (default: all, and lucent where it is installed)")
    args = parser.parse_args()
    given = {name: getattr(args, name) for name in CHECKPOINTS}
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}; expected a positive number of checkpoint sets")
    if args.first_set < 0:
        parser.error(f"--first-set {args.first_set}; expected a set number >= 0")
    if args.repeats > 1 and (any(given.values()) or args.comparator):
        parser.error("--repeats > 1 trains fresh sets; expected no checkpoints on the command line")
    if args.comparator and args.comparator == args.judge:
        parser.error(f"--comparator {args.comparator} is the judge; expected another classifier (the judge "
                     "must be independent of G)")
    if any(b < 1 for b in args.budgets) or (args.budgets and args.generator):
        parser.error(f"--budgets {args.budgets}; expected positive G step counts, and no --generator")
    if args.data_root and not (Path(args.data_root) / "train").is_dir():
        parser.error(f"--data-root {args.data_root} has no train/ folder; expected DIR/train/<class>/* "
                     "and DIR/val/<class>/*")
    os.environ.setdefault("WANDB_MODE", "disabled")
    data = ["data=imagefolder", f"data.root={Path(args.data_root).resolve()}"] if args.data_root else []
    asked = args.methods or [*METHODS, *(["lucent"] if importlib.util.find_spec("lucent") else [])]
    if args.methods is None and "lucent" not in asked:
        print(f"lucent is not installed, so its row is left out ({LUCENT_INSTALL})")
    if "lucent" in asked and not importlib.util.find_spec("lucent"):
        parser.error(f"--methods lucent: lucent is not installed; expected it installed ({LUCENT_INSTALL})")
    methods = [m for m in CHOICES if m in asked]
    method_overrides: dict[str, list[str]] = {}
    for given_override in args.method_override:
        method, _, override = given_override.partition(":")
        if method not in methods or "=" not in override or method == "lucent":
            parser.error(f"--method-override {given_override}; expected METHOD:KEY=VALUE with METHOD one of "
                         f"{', '.join(m for m in methods if m != 'lucent')}")
        method_overrides.setdefault(method, []).append(override)
    priors = any(m.partition("+")[0] in CODE_METHODS for m in methods)
    if args.selection and (not {"dgn_am"} <= set(methods) or args.budgets or args.generator or args.generator_seeds < 1):
        parser.error("--selection trains G and measures DGN-AM on it; expected dgn_am among --methods, "
                     "--generator-seeds >= 1, and no --budgets or --generator")
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-quality-"))
    budgets = sorted(set(args.budgets))
    sets: dict[int | None, list[dict[str, float]]] = {b: [] for b in budgets or [None]}
    sets_run = range(args.first_set, args.first_set + args.repeats)
    for repeat in sets_run:
        folder = out / f"set{repeat}"
        checkpoints, by_budget, minutes = checkpoint_set(folder, repeat, data, given, args.comparator,
                                                         args.generator_override, budgets, priors,
                                                         generator=not args.selection)
        print(f"\n== set {repeat} (seeds {100 * repeat}+): {json.dumps(checkpoints)}")
        if args.selection:
            sets[None].append(selection_figures(folder, repeat, data, checkpoints, args, methods, method_overrides))
            continue
        for budget in sets:
            if budget is not None:
                checkpoints = {**checkpoints, "generator": by_budget[budget]}
                print(f"\n-- G budget {budget} steps: {by_budget[budget]}")
            figures, sheet = measure(checkpoints, folder / (f"budget{budget}" if budget else ""), data,
                                     args.seeds, methods, args.code_method_override, method_overrides)
            if minutes is not None:
                # a shorter budget's share of the longest run's minutes, in proportion to its epochs
                figures["generator_train_minutes"] = round(minutes * min(1.0, budget / max(budgets)) if budget
                                                           else minutes, 2)
            sets[budget].append(figures)
            if repeat == sets_run[0] and budget == max(budgets, default=None):
                sheet_path = save_png(sheet, (ROOT / "docs" / "methods.png") if args.docs else folder / "methods.png")
                print(f"contact sheet: {sheet_path}")
    worst = {budget: print_worst(runs, f" (G budget {budget} steps)" if budget else "", sets_run)
             for budget, runs in sets.items()}
    print(f"runs: {out}")
    if budgets:
        return {"budgets": {str(b): {**worst[b], "repeats": sets[b]} for b in budgets}}
    return {**worst[None], "repeats": sets[None]}


def print_worst(sets: list[dict[str, float]], title: str, numbers: range) -> dict[str, float]:
    """Print each figure per set, its worst case and its target; returns the worst case."""
    worst = worst_case(sets)
    print(f"\n{'figure (worst over ' + str(len(sets)) + ' sets)' + title:<40}"
          + "".join(f"{'set ' + str(i):>9}" for i in numbers) + f"{'worst':>9}  target")
    for key, value in worst.items():
        print(f"{key:<40}" + "".join(f"{s[key]:>9.3f}" for s in sets) + f"{value:>9.3f}  {TARGETS.get(key, '')}")
    return worst


if __name__ == "__main__":
    print(json.dumps(main()))
