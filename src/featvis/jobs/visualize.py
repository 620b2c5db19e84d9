"""The job behind `visualize.py`: synthesize preferred images of units of a target network.

Everything is validated (checkpoints, layer, units, method) before anything is
written; images go to temporary names and are renamed into place, and
`metrics.json` is written last, so a run dir with a metrics.json is complete.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from featvis.checkpoints import load_classifier, load_record
from featvis.devices import resolve_device, use_tf32
from featvis.jobs.distributed import share_cpus_with_parallel_jobs
from featvis.errors import ConfigError
from featvis.io import read_checkpoint, remove_partials, save_gif, save_png, save_tensors, save_text, writable_dir
from featvis.nets.layers import layer_names
from featvis.nets.targets import build_target
from featvis.reports.grids import labelled_grid
from featvis.synthesis.methods import Unit, load_method, needs_real_spectrum, parse_units, units_of
from featvis.synthesis.parametrizations import MACO_SPECTRUM_IMAGES
from featvis.synthesis.real import RealImages
from featvis.synthesis.settings import SynthesisSpec
from featvis.synthesis.synthesize import load_judge, logits_layer_of, synthesize

__all__ = ["Unit", "build", "parse_units", "synthesize", "visualize"]

log = logging.getLogger(__name__)


# Figures a sweep can optimize (`sweep.objective`, a product of these): means over the syntheses
# shown in grid.png (unit_objective: the sampler's objective), and the faithfulness figures of metrics.json's `evaluation`.
SWEEP_FIGURES = {"unit_objective": None, "activation": None, "probability": None,
                 "judge_transfer": "judge.ckpt", "diversity": "judge.ckpt",
                 "beats_real_top1": "evaluation.real_images > 0", "kid_mean": "judge.ckpt"}


def sweep_terms(cfg: DictConfig) -> list[str]:
    """The figures whose product visualize.py returns to Hydra sweepers; checked before any work."""
    terms = cfg.get("sweep", {}).get("objective") or []
    terms = [terms] if isinstance(terms, str) else list(terms)
    unknown = [t for t in terms if t not in SWEEP_FIGURES]
    if unknown:
        raise ConfigError(f"sweep.objective={terms}: {unknown[0]!r} is not a figure; expected names of "
                          f"{', '.join(SWEEP_FIGURES)}")
    if _optimizing_sweep():  # a sweeper that needs a number from every job: its inputs must be there
        needs = {"judge.ckpt": bool(cfg.judge.get("ckpt")),
                 "evaluation.real_images > 0": int(cfg.evaluation.real_images) > 0}
        for term in terms:
            need = SWEEP_FIGURES[term]
            if need and not needs[need]:
                raise ConfigError(f"sweep.objective names {term}, which needs {need}; expected "
                                  f"{need.split(' ')[0]}=... on the command line")
        if not terms:
            raise ConfigError("sweep.objective is empty; expected the figures to optimize, e.g. "
                              "[judge_transfer,diversity]")
    return terms


def _optimizing_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and bool(HydraConfig.get().runtime.choices.get("hparams_search"))


def sweep_value(terms: list[str], records: list[dict[str, Any]], evaluation: dict[str, Any] | None,
                keep: str) -> dict[str, Any]:
    """{"objective": product of the figures or None when one is missing, "figures": each figure}."""
    def mean(key: str) -> float | None:
        values = [r[keep][key] for r in records if r[keep][key] is not None]  # directions have no probability
        return sum(values) / len(values) if values else None

    figures = {"unit_objective": mean("objective"), "activation": mean("activation"), "probability": mean("probability")}
    for key in ("judge_transfer", "diversity", "beats_real_top1", "kid_mean"):
        if evaluation and evaluation.get(key) is not None:
            figures[key] = float(evaluation[key])
    value = (math.prod(figures[t] for t in terms)
             if terms and all(figures.get(t) is not None for t in terms) else None)
    return {"objective": value, "terms": terms, "figures": figures}


def build(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Load and check everything `cfg` names; nothing is written here."""
    sweep_terms(cfg)
    if cfg.target.get("ckpt"):
        target, t_record = load_classifier(cfg.target.ckpt)
    elif any(cfg.target.get(k) for k in ("torchvision", "timm", "_target_")):
        target = build_target(OmegaConf.to_container(cfg.target, resolve=True))
        t_record = {"class_names": target.class_names}
    else:
        raise ConfigError("target.ckpt is not set; expected a classifier checkpoint (task=classifier), "
                          "target.torchvision=<name> or target.timm=<name> (with target.weights=<local file>), "
                          "or target._target_=<an importable factory>")
    real_images = int(cfg.evaluation.real_images)
    spec = SynthesisSpec.of(cfg, class_names=t_record["class_names"], max_real=real_images,
                            record_every=int(cfg.record_every) if cfg.gif else 0,
                            performance={k: v for k, v in cfg.performance.items() if k != "tf32"})  # tf32: process-wide
    units, _ = units_of(target, spec.units, spec.layer or logits_layer_of(target), spec.class_names, spec.spatial,
                        spec.pre_relu)
    data = pool = None
    spectrum_from_data = needs_real_spectrum(cfg.method)
    if real_images > 0 or spectrum_from_data:
        # Render or load no more validation images than the figures (or MACO's spectrum) use.
        count = max(real_images, MACO_SPECTRUM_IMAGES if spectrum_from_data else 0)
        data = instantiate(cfg.data, image_size=target.image_size, **({"val_size": count} if "val_size" in cfg.data else {}))
        data.setup("validate")
        pool = RealImages(data.val_dataloader(), target.image_size, count)  # read once, when first used
    method = load_method(cfg.method, spec.generator.ckpt, spec.prior.ckpt, target.image_size,
                         real=pool if spectrum_from_data else None)
    method.settings(spec.steps)  # the step settings, refused before anything is written
    judge = load_judge(spec.judge.ckpt, spec.judge.feature_layer, target) if spec.judge.ckpt else None
    real = data if real_images > 0 else None
    if real is not None:
        spec = spec.but(real_classes=real.class_names,
                        path_layers=path_layers(cfg.evaluation.get("path_layers", "auto"), target))
    return {"target": target.to(device), "units": units, "method": method, "spec": spec, "target_record": t_record,
            "judge": judge, "real_images": pool if real is not None else None}


# The activation-path check's layers when `evaluation.path_layers=auto`: those of featvis's
# AlexNet layout the target has (a torchvision target names its own).
AUTO_PATH_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def path_layers(wanted: Any, target: torch.nn.Module) -> list[str]:
    known = layer_names(target)
    if wanted == "auto":
        return [name for name in AUTO_PATH_LAYERS if name in known]
    wanted = [] if wanted is None else list(wanted)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ConfigError(f"evaluation.path_layers={wanted}: {unknown[0]!r} is not a layer of the target; "
                          "expected auto, [] or names such as conv3 or layer4.1.relu")
    return wanted


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """Synthesize, then write grid.png, per-image PNGs, GIFs and metrics.json to cfg.output_dir."""
    if cfg.get("mode", "synthesis") == "evolution":
        return evolution_from_checkpoints(cfg)
    if cfg.get("mode", "synthesis") == "closed_loop":
        return closed_loop(cfg)
    if cfg.get("mode", "synthesis") != "synthesis":
        raise ConfigError(f"mode={cfg.mode!r}; expected synthesis, evolution or closed_loop")
    share_cpus_with_parallel_jobs()
    device = resolve_device(cfg.device)
    use_tf32(cfg.performance.tf32)
    built = build(cfg, device)
    from featvis.jobs.loggers import log_lines_once  # imports Lightning: after the checks, so bad input fails fast

    log_lines_once()
    units, spec = built["units"], built["spec"]
    seeds = spec.seeds
    out = writable_dir(Path(cfg.output_dir))
    remove_partials(out)  # what a killed run in this dir left; its complete files are rewritten
    found = synthesize(built["target"], units, built["method"], spec, judge=built["judge"], real=built["real_images"],
                       progress=True)
    result = found.result
    shown = found.images
    if cfg.transparency and result.alpha is not None:  # fade to white where the objective did not look
        shown = shown * result.alpha + (1 - result.alpha)
    grid = labelled_grid(shown, len(units), [u.label for u in units], [f"seed {k}" for k in range(seeds)])
    save_png(grid, out / "grid.png")
    kinds = [("last", result.last), ("best", result.best), *([("alpha", result.alpha)] if result.alpha is not None else [])]
    records = []
    for b, row in enumerate(found.rows):
        unit, k = units[b // seeds], b % seeds
        files = {kind: str(save_png(images[b], out / "images" / unit.slug / f"seed{k}_{kind}.png").relative_to(out))
                 for kind, images in kinds}
        records.append({**row, "files": files})
    space, magnitude = built["method"].space, None
    if getattr(space, "magnitude", None) is not None:  # MACO's spectrum, cached: method.space.magnitude=<this file>
        colour = getattr(space, "real_colour", None)
        magnitude = str(save_tensors({"magnitude": space.magnitude, **({"mean_colour": colour} if colour is not None else {})},
                                     out / "maco_magnitude.pt"))
    if result.frames:
        for u, unit in enumerate(units):
            frames = [make_row(frame[u * seeds:(u + 1) * seeds]) for frame in result.frames]
            save_gif(frames, out / "gifs" / f"{unit.slug}.gif")

    evaluation = found.evaluation
    target_name = next((str(cfg.target.get(k)) for k in ("ckpt", "torchvision", "timm", "_target_") if cfg.target.get(k)), None)
    summary = {"method": cfg.method.name, "layer": spec.layer or logits_layer_of(built["target"]), "target": target_name,
               "generator": spec.generator.ckpt, "prior": spec.prior.ckpt,
               **({"magnitude": magnitude} if magnitude is not None else {}),
               "settings": found.settings.__dict__, "objective_mode": cfg.method.objective.kind,
               "selectivity": float(cfg.method.objective.selectivity), "keep": spec.keep, "results": records,
               "evaluation": evaluation, "sweep": sweep_value(sweep_terms(cfg), records, evaluation, spec.keep)}
    if built["method"].search is not None:
        from featvis.blackbox.search import search_record

        summary["search"] = search_record(built["method"].search, result)
    _log_to_logger(cfg, grid, records)
    save_text(json.dumps(summary, indent=2), out / "metrics.json")
    log.info("wrote %s", out / "grid.png")
    if evaluation and "skipped" not in evaluation:
        log.info("evaluation: %s", evaluation_line(evaluation))
    return summary


def evaluation_line(evaluation: dict[str, Any]) -> str:
    """The headline figures of an evaluation, in words (metrics.json has them all)."""
    parts = []
    if evaluation.get("judge_transfer") is not None:
        parts.append(f"judge transfer {evaluation['judge_transfer']:.2f}")
    if evaluation.get("beats_real_top1") is not None:
        parts.append(f"beats the top real image {evaluation['beats_real_top1']:.2f}")
    if evaluation.get("diversity") is not None:
        real = evaluation.get("real_diversity")
        parts.append(f"diversity {evaluation['diversity']:.3g}"
                     + (f" ({evaluation['diversity_vs_real']:.2f} of real images' {real:.3g})" if real else ""))
    if evaluation.get("kid_mean") is not None:
        parts.append(f"KID {evaluation['kid_mean']:.3g}")
    return ", ".join(parts) or "no figures (no judge or real images)"


def make_row(images: torch.Tensor) -> torch.Tensor:
    from torchvision.utils import make_grid

    return make_grid(images.clamp(0, 1), nrow=len(images), padding=2, pad_value=1.0)


def _log_to_logger(cfg: DictConfig, grid, records: list[dict[str, Any]]) -> None:
    """The grid as a wandb image and the metrics as a wandb table (other loggers: files only)."""
    from lightning.pytorch.loggers import WandbLogger

    if not cfg.get("logger"):
        return
    logger = instantiate(cfg.logger)
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_image("synthesis/grid", [grid])
    rows = [[r["unit"], r["seed"], r["best"]["activation"], r["best"]["probability"], r["best"]["rank"]]
            for r in records]
    logger.log_table("synthesis/metrics", columns=["unit", "seed", "activation", "probability", "rank"],
                     data=rows)
    wandb.finish()


def checkpoints_in_order(folder: str | Path, kind: str | None = "classifier") -> list[tuple[Path, int, int]]:
    """(path, global step, epoch) of the checkpoints in `folder`, one per step, in step order: featvis
    checkpoints of `kind`, or any Lightning checkpoints (kind None)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"target.ckpt_dir={root} is not a folder; expected a folder of .ckpt files")
    by_step: dict[int, tuple[Path, int, int]] = {}
    # last.ckpt repeats the newest step: named checkpoints first, so they win
    for path in sorted(root.glob("*.ckpt"), key=lambda p: (p.name.startswith("last"), p.name)):
        # a wrong kind stops here, before any output
        checkpoint = load_record(path, kind)[1] if kind else read_checkpoint(path)
        step = int(checkpoint.get("global_step", -1))
        by_step.setdefault(step, (path, step, int(checkpoint.get("epoch", 0))))
    if not by_step:
        raise ConfigError(f"target.ckpt_dir={root} holds no .ckpt files; expected checkpoints of "
                          + (f"task={kind}" if kind else "the configured target's training run"))
    return [by_step[s] for s in sorted(by_step)]


def evolution_from_checkpoints(cfg: DictConfig) -> dict[str, Any]:
    """The feature-evolution outputs (<output_dir>/evolution) for saved checkpoints of a run."""
    from featvis.evolution.recorder import EvolutionRecorder  # imports Lightning (featvis.evolution)

    if not cfg.target.get("ckpt_dir"):
        raise ConfigError("mode=evolution needs target.ckpt_dir; expected a folder of classifier checkpoints")
    device = resolve_device(cfg.device)
    use_tf32(cfg.performance.tf32)
    own = any(cfg.target.get(k) for k in ("torchvision", "timm", "_target_"))
    checkpoints = checkpoints_in_order(cfg.target.ckpt_dir, None if own else "classifier")
    recorder = EvolutionRecorder(SynthesisSpec.of(cfg), OmegaConf.to_container(cfg.method, resolve=True),
                                 output_dir=Path(cfg.output_dir) / "evolution",
                                 real_images=int(cfg.evaluation.real_images))
    def network(path: Path) -> tuple[torch.nn.Module, list[str]]:
        """A checkpoint's network: featvis's own classifier, or the configured target with its weights."""
        if not own:
            net, record = load_classifier(path)
            return net, record["class_names"]
        net = build_target({**OmegaConf.to_container(cfg.target, resolve=True), "weights": str(path)})
        return net, net.class_names

    net, class_names = network(checkpoints[0][0])
    real = None
    spectrum_from_data = needs_real_spectrum(cfg.method)
    if recorder.real_images and (recorder.spec.top_k or spectrum_from_data):
        data = instantiate(cfg.data, image_size=net.image_size,
                           **({"val_size": recorder.real_images} if "val_size" in cfg.data else {}))
        data.setup("validate")
        real = data.val_dataloader()
    recorder.prepare(net, class_names, real)  # units, priors and judge checked before any output
    writable_dir(recorder.output_dir)
    for path, step, epoch in tqdm(checkpoints, desc="checkpoints"):
        net, class_names = network(path)
        if class_names != recorder.class_names:
            raise ConfigError(f"checkpoint {path} has other classes than {checkpoints[0][0]}; "
                              "expected checkpoints of one run")
        images, rows = recorder.synthesize(net.to(device))
        recorder.record(step, epoch, images, rows)
    summary = recorder.report()
    log.info("wrote %s", recorder.output_dir / "index.html")
    return {"index": str(recorder.output_dir / "index.html"), "steps": recorder.recorded_steps(), **summary}



def closed_loop(cfg: DictConfig) -> dict[str, Any]:
    """One turn of a closed-loop experiment in `closed_loop.dir`: read the responses to the last
    generation asked (its responses.csv), tell them, and ask the next generation; without them,
    say where they are expected and change nothing."""
    from featvis.blackbox.session import Session, read_responses

    loop = cfg.closed_loop
    if not loop.get("dir"):
        raise ConfigError("mode=closed_loop needs closed_loop.dir; expected the experiment's folder, the same on "
                          "every call (e.g. closed_loop.dir=experiments/neuron7)")
    generations = loop.get("generations")
    if generations is not None and (isinstance(generations, bool) or not isinstance(generations, int) or generations < 1):
        raise ConfigError(f"closed_loop.generations={generations}; expected a positive number or null (no end)")
    spec = SynthesisSpec.of(cfg)
    units = [spec.units] if isinstance(spec.units, (str, int)) else list(spec.units)
    session = Session(generator=spec.generator.ckpt, method=OmegaConf.to_container(cfg.method, resolve=True),
                      units=units, seeds=spec.seeds, output_dir=loop.dir, seed=spec.noise_seed,
                      image_size=int(cfg.image_size))
    if session.pending is not None:
        responses = session.folder() / "responses.csv"
        if not responses.is_file():
            log.info("waiting for %s: one response per image of generation %d (images.csv), then run again",
                     responses, session.generation)
            return {**session.summary(), "waiting_for": str(responses)}
        session.tell(read_responses(responses, session.image_names()))
        log.info("generation %d told: best response per run %s", session.generation - 1,
                 [round(v, 3) for v in session.best_value.tolist()])
    if generations is not None and session.generation >= generations:
        report = session.report()
        log.info("the experiment's %d generations are done; best images in %s", generations,
                 session.output_dir / "best.png")
        return {**session.summary(), "report": str(report)}
    session.ask()
    session.report()
    log.info("generation %d: show the %d images in %s, write their responses to %s (one per image, in "
             "images.csv's order), then run again", session.generation, session.runs * session.size,
             session.folder(), session.folder() / "responses.csv")
    return {**session.summary(), "waiting_for": str(session.folder() / "responses.csv")}
