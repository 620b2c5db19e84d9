"""The job behind `visualize.py`: synthesize preferred images of units of a target network.

Everything is validated (checkpoints, layer, units, method) before anything is
written; images go to temporary names and are renamed into place, and
`metrics.json` is written last, so a run dir with a metrics.json is complete.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from featvis.checkpoints import check_same_code, load_classifier, load_generator, load_prior
from featvis.errors import ConfigError
from featvis.nets.codes import CodeStatistics
from featvis.nets.encoder import Encoder
from featvis.nets.layers import activations, layer_names, tap
from featvis.nets.torchvision_target import TorchvisionTarget
from featvis.reports.grids import atomic_path, commit, labelled_grid, save_gif, save_png
from featvis.synthesis import ObjectiveBatch, Sampler, SamplerSettings, Term
from featvis.synthesis.evaluation import evaluate
from featvis.synthesis.objectives import reduce_units
from featvis.synthesis.parametrizations import FourierImage
from featvis.synthesis.priors import (CenteredGaussianPrior, DAEPrior, EncoderLoopPrior, GaussianPrior,
                                      ImageOperators, TotalVariationPrior)

log = logging.getLogger(__name__)

SETTINGS_KEYS = ("steps", "lr", "lr_end", "eps1", "eps2", "eps3", "normalize_gradient",
                 "clip_quantile", "decay", "jitter", "scale", "rotate")
TERM = re.compile(r"\s*([+-]?)\s*(?:(\d*\.?\d+)\s*\*\s*)?([^+-]+?)\s*(?=[+-]|$)")


@dataclass
class Unit:
    """One row of the grid: a label and the objective terms behind it."""

    label: str
    terms: list[Term]


def parse_units(spec: list[Any], layer: str, class_names: list[str], layer_size: int) -> list[Unit]:
    """Units as ints, class names, or sums like "3+7" (activate both) and "3-0.5*7" (suppress 7)."""
    if not spec:
        raise ConfigError("units=[]; expected at least one unit index or class name")

    def index(token: str) -> int:
        if re.fullmatch(r"\d+", token):
            if int(token) >= layer_size:
                raise ConfigError(f"unit {token} out of range for layer {layer!r}; expected 0 to {layer_size - 1}")
            return int(token)
        if class_names and len(class_names) == layer_size and token in class_names:
            return class_names.index(token)
        raise ConfigError(f"unit {token!r} is not an index or a class name of layer {layer!r}; "
                          f"expected 0..{layer_size - 1}" + (f" or one of {class_names}" if class_names else ""))

    units = []
    for item in spec:
        text = str(item)
        terms = []
        for sign, weight, token in TERM.findall(text):
            value = float(weight) if weight else 1.0
            terms.append(Term(layer, index(token.strip()), -value if sign == "-" else value))
        if not terms:
            raise ConfigError(f"unit {text!r} could not be read; expected e.g. 3, 'red circle', '3+7' or '3-7'")
        named = class_names and len(class_names) == layer_size
        if named and len(terms) == 1 and re.fullmatch(r"\d+", text.strip()):
            text = f"{text} {class_names[terms[0].unit]}"  # the grid shows what the unit is
        units.append(Unit(text, terms))
    return units


def _prior(name: str | None, generator, prior_ckpt: str | None, g_record: dict | None):
    """The eps2 term named by method.prior."""
    if name in (None, "none"):
        return None, None
    if name == "l2":
        return (CenteredGaussianPrior(0.5) if generator is None else GaussianPrior()), None
    if name == "tv":
        return TotalVariationPrior(), None
    if name == "dae":
        if not prior_ckpt:
            raise ConfigError("method.prior=dae needs prior.ckpt; expected a checkpoint from task=prior")
        dae, _, record = load_prior(prior_ckpt)
        check_same_code(g_record, record)
        return DAEPrior(dae), record
    if name == "encoder_loop":
        encoder_ckpt = g_record["encoder"]["checkpoint"]
        net, _ = load_classifier(encoder_ckpt)
        return EncoderLoopPrior(generator, Encoder(net, g_record["encoder"]["code_layer"])), None
    raise ConfigError(f"method.prior={name!r}; expected none, l2, tv, dae or encoder_loop")


def build(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Load and check everything `cfg` names; nothing is written here."""
    method = cfg.method
    if method.space not in ("pixel", "fft", "code"):
        raise ConfigError(f"method.space={method.space!r}; expected pixel, fft or code")
    if cfg.target.get("ckpt"):
        target, t_record = load_classifier(cfg.target.ckpt)
    elif cfg.target.get("torchvision"):
        target = TorchvisionTarget(cfg.target.torchvision, cfg.target.get("weights"), cfg.target.image_size,
                                   cfg.target.num_classes)
        t_record = {"class_names": []}
    else:
        raise ConfigError("target.ckpt is not set; expected a classifier checkpoint (task=classifier) "
                          "or target.torchvision=<model name> with target.weights=<local file>")
    if cfg.layer not in layer_names(target):
        tap(target, [cfg.layer])  # raises the one-line error that lists the target's layers
    size = target.image_size
    probe = activations(target, torch.zeros(1, 3, size, size), [cfg.layer])[cfg.layer]
    layer_size = reduce_units(probe).shape[1]
    units = parse_units(list(cfg.units), cfg.layer, t_record["class_names"], layer_size)
    if int(cfg.seeds) < 1:
        raise ConfigError(f"seeds={cfg.seeds}; expected a positive number of seeds per unit")

    settings = SamplerSettings(**{k: method[k] for k in SETTINGS_KEYS},
                               record_every=int(cfg.record_every) if cfg.gif else 0)
    if cfg.get("steps") is not None:
        settings = SamplerSettings(**{**settings.__dict__, "steps": int(cfg.steps)})

    generator = stats = g_record = None
    if method.space == "code":
        if not cfg.generator.get("ckpt"):
            raise ConfigError(f"method={method.name} optimizes a generator's code; expected generator.ckpt")
        generator, stats, g_record = load_generator(cfg.generator.ckpt)
    elif method.space == "fft":  # a fixed, parameter-free "generator": spectrum -> image
        generator = FourierImage(target.image_size)
    prior, _ = _prior(method.prior, generator, cfg.prior.get("ckpt"), g_record)
    operators = ImageOperators(**method.image_operators) if method.get("image_operators") else None
    upper = stats.quantile(method.clip_quantile) if (stats is not None and method.clip_quantile) else None
    objectives = ObjectiveBatch([u.terms for u in units for _ in range(int(cfg.seeds))],
                                {cfg.layer: layer_size}, mode=method.objective, spatial=cfg.spatial)
    judge, judge_record = None, None
    if cfg.judge.get("ckpt"):
        judge, judge_record = load_classifier(cfg.judge.ckpt)
        same_weights = judge.spec == getattr(target, "spec", None) and all(
            torch.equal(a, b) for a, b in zip(judge.state_dict().values(), target.state_dict().values()))
        if same_weights:
            raise ConfigError(f"judge.ckpt={cfg.judge.ckpt} has the target's own weights; expected an "
                              "independent classifier (another seed or width)")
        if cfg.judge.feature_layer not in layer_names(judge):
            raise ConfigError(f"judge.feature_layer={cfg.judge.feature_layer!r} not found in the judge")
    real = None
    if int(cfg.evaluation.real_images) > 0:
        # Render or load no more validation images than the figures use.
        fewer = {"val_size": int(cfg.evaluation.real_images)} if "val_size" in cfg.data else {}
        real = instantiate(cfg.data, image_size=target.image_size, **fewer)
        real.setup("validate")
    for module in (target, generator, getattr(prior, "dae", None), getattr(prior, "encoder", None), judge):
        if module is not None:
            module.to(device)
    sampler = Sampler(target, objectives, settings, generator=generator, prior=prior, code_upper=upper,
                      image_operators=operators, **cfg.performance)
    return {"sampler": sampler, "units": units, "stats": stats, "target_record": t_record,
            "layer_size": layer_size, "judge": judge, "judge_record": judge_record, "real": real}


def initial_z(method: DictConfig, stats: CodeStatistics | None, units: int, seeds: int, image_size: int,
              device: torch.device) -> torch.Tensor:
    """Per seed k the same start for every unit, so a grid column shares its starting point."""
    starts = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        if method.space == "pixel":
            starts.append((0.5 + 0.05 * torch.randn(1, 3, image_size, image_size, generator=gen)).clamp(0, 1))
        elif method.space == "fft":
            starts.append(FourierImage(image_size).initial(1, gen))
        elif method.init == "stats":
            starts.append(stats.sample(1, gen))
        elif method.init == "zeros":
            starts.append(torch.zeros(1, stats.mean.numel()))
        else:
            raise ConfigError(f"method.init={method.init!r}; expected stats or zeros for code methods")
    z = torch.cat(starts)  # (seeds, ...)
    return z.repeat(units, *([1] * (z.ndim - 1))).to(device)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """Synthesize, then write grid.png, per-image PNGs, GIFs and metrics.json to cfg.output_dir."""
    device = _device(cfg.device)
    built = build(cfg, device)
    sampler, units, seeds = built["sampler"], built["units"], int(cfg.seeds)
    z0 = initial_z(cfg.method, built["stats"], len(units), seeds, sampler.target.image_size, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-check"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise ConfigError(f"output_dir={out} is not writable; expected a writable folder") from None

    result = sampler.run(z0, seed=int(cfg.noise_seed), progress=True)
    with torch.no_grad():
        acts = {k: v.cpu() for k, v in sampler.taps(result.last.to(device)).items()}
        best_acts = {k: v.cpu() for k, v in sampler.taps(result.best.to(device)).items()}
    objectives = sampler.objectives.to(torch.device("cpu"))
    last_metrics, best_metrics = objectives.unit_metrics(acts), objectives.unit_metrics(best_acts)

    shown = result.best if cfg.keep == "best" else result.last
    grid = labelled_grid(shown, len(units), [u.label for u in units], [f"seed {k}" for k in range(seeds)])
    save_png(grid, out / "grid.png")
    records = []
    for u, unit in enumerate(units):
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", unit.label)
        for k in range(seeds):
            b = u * seeds + k
            files = {kind: str(save_png(images[b], out / "images" / f"{cfg.layer}-{slug}" / f"seed{k}_{kind}.png")
                               .relative_to(out)) for kind, images in (("last", result.last), ("best", result.best))}
            records.append({
                "unit": unit.label, "terms": [t.__dict__ for t in unit.terms], "seed": k,
                "last": {"objective": float(result.last_value[b]), **_metric_row(last_metrics, b)},
                "best": {"objective": float(result.best_value[b]), "step": int(result.best_step[b]),
                         **_metric_row(best_metrics, b)},
                "files": files,
            })
        if result.frames:
            frames = [make_row(frame[u * seeds:(u + 1) * seeds]) for frame in result.frames]
            save_gif(frames, out / "gifs" / f"{cfg.layer}-{slug}.gif")

    evaluation = _evaluate(cfg, built, shown, best_metrics if cfg.keep == "best" else last_metrics, device)
    summary = {"method": cfg.method.name, "layer": cfg.layer, "target": str(cfg.target.ckpt),
               "generator": cfg.generator.get("ckpt"), "prior": cfg.prior.get("ckpt"),
               "settings": sampler.settings.__dict__, "objective_mode": cfg.method.objective,
               "keep": cfg.keep, "results": records, "evaluation": evaluation}
    _log_to_logger(cfg, grid, records)
    tmp = atomic_path(out / "metrics.json")
    tmp.write_text(json.dumps(summary, indent=2))
    commit(tmp, out / "metrics.json")
    log.info("wrote %s", out / "grid.png")
    return summary


def _evaluate(cfg: DictConfig, built: dict[str, Any], images: torch.Tensor, metrics: dict[str, torch.Tensor],
              device: torch.device) -> dict[str, Any] | None:
    """Faithfulness figures of the shown images (see featvis.synthesis.evaluation)."""
    if built["real"] is None and built["judge"] is None:
        return None
    units, judge, t_record = built["units"], built["judge"], built["target_record"]
    judge_record = built["judge_record"] or {}
    # Judge transfer asks the judge for the unit's class: only for single class units of the logits.
    classes_match = (judge is not None and cfg.layer == "fc8"
                     and judge_record.get("class_names") == t_record["class_names"]
                     and all(len(u.terms) == 1 for u in units))
    target, judge = built["sampler"].target.cpu(), judge.cpu() if judge is not None else None
    real = built["real"].val_dataloader() if built["real"] is not None else None
    report = evaluate(target, judge, [u.terms[0] for u in units], images, metrics["activation"],
                      int(cfg.seeds), real, spatial=cfg.spatial, judge_layer=cfg.judge.feature_layer,
                      judge_classes_match=classes_match, max_real=int(cfg.evaluation.real_images))
    for row, unit in zip(report["per_unit"], units):
        row["unit"] = unit.label
    return report


def make_row(images: torch.Tensor) -> torch.Tensor:
    from torchvision.utils import make_grid

    return make_grid(images.clamp(0, 1), nrow=len(images), padding=2, pad_value=1.0)


def _metric_row(metrics: dict[str, torch.Tensor], b: int) -> dict[str, float]:
    return {"activation": float(metrics["activation"][b]), "probability": float(metrics["probability"][b]),
            "rank": int(metrics["rank"][b])}


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
