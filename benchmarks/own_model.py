"""Own networks as targets, on the CPU: sampler speed beside the bare network, and blank tiles of
the callback in a plain LightningModule.

    python benchmarks/own_model.py [--size 64] [--steps 12] [--rounds 9] [--generator G.ckpt]
                                   [--threads N] [--quick]

Speed.  Per target family (featvis's tiny AlexNet; torchvision's ResNet-18 and a small
VisionTransformer behind `featvis.as_target`, random weights: what a step costs does not depend
on what the network learned) and per method (`pixel_fft`; `dgn_am` with a tiny generator G), a
batch of units x seeds images (units of the logits layer and of one conv or token layer, read as
the callback reads them: the spatial mean before the final ReLU) is optimized by the Sampler.
Its step time is measured from the start of one step to the start of the next (the run's fixed
cost, the final readout and copies, is left out).  Beside it, in the same round, the bare step:
the same network through the same taps (featvis.nets.layers.tap on the same layers), a forward
of the batch and a backward to the input (pixel_fft: to the image; dgn_am: to G's code, through
G(z) fitted to the target's size), nothing else.  Sampler and bare timings alternate, in rounds,
and the medians are kept.

Blank tiles.  A LightningModule with no featvis attribute holds a torchvision network as
`self.net` (ResNet-18, then the small ViT), trained with SGD on an ImageFolder of shape PNGs
(read with ToTensor and ImageNet's Normalize) while a FeatureEvolution with dgn_am records its
units; the callback reads the input contract from the validation data.

Prints a table, then, as its last line, one JSON object:
  sampler_vs_bare_<family>_<method>   sampler seconds per step / bare seconds per step
  sampler_vs_bare_<family>            the worse of the two methods (target <= 1.3 on the CPU)
  sampler_ms_<family>_<method>, bare_ms_<family>_<method>
                                      the median step times behind the ratios
  unit_steps_per_s_<family>_<method>  images x steps per second of the sampler
                                      (the table adds the lowest and highest of the rounds' own
                                      ratios: a wide range means the machine was busy)
  own_module_blank_tile_fraction      blank tiles / all tiles over every frame of evolution.json,
                                      ResNet-18 (target <= 0.05)
  own_module_blank_tile_fraction_vit  the same for the ViT (its head starts at zero weights, so a
                                      logits unit has no gradient at step 0: its tiles there stay
                                      blank whatever the sampler does)
  ..._after_step0                     the same over the frames after step 0
  torch_threads, size, batch, steps, rounds, train_steps

Without --generator a tiny G is trained first (a 32 px classifier and G, one short epoch each):
its quality changes neither the step time nor whether a gradient reaches a unit.
"""

from __future__ import annotations

import sys

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torchvision
from report import print_figures
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared test helpers live in tests/
from featvis.evolution import FeatureEvolution
from featvis.nets import AlexNet
from featvis.nets.adapters import fit_images
from featvis.nets.layers import frozen, tap
from featvis.nets.targets import IMAGENET_MEAN, IMAGENET_STD, as_target
from featvis.synthesis.methods import Method, Unit, load_method, method_config, units_of
from featvis.synthesis.sampler import Sampler
from featvis.synthesis.synthesize import logits_layer_of, sampler_for
from tests.checks import PlainClassifier, shapes_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("alexnet", "resnet18", "vit")
METHODS = ("pixel_fft", "dgn_am")
CLASSES = 10
VIT_LAYER = "encoder.layers.encoder_layer_{}"
# The units of the speed batch: (logits units, units of one conv or token layer) per family.
SPEED_UNITS = {
    "alexnet": (["fc8:0", "fc8:1", "fc8:2", "fc8:3"], ["conv3:0", "conv3:1", "conv3:2", "conv3:3"]),
    "resnet18": (["logits:0", "logits:1", "logits:2", "logits:3"], ["layer3:0", "layer3:1", "layer3:2", "layer3:3"]),
    "vit": (["logits:0", "logits:1", "logits:2", "logits:3"],
            [f"{VIT_LAYER.format(2)}:{u}@{p}" for u, p in ((0, "cls"), (1, "cls"), (2, "mean"), (3, "mean"))]),
}
# The callback's units in the plain LightningModule.
EVOLUTION_UNITS = {
    "resnet18": ["layer1:0", "layer2:0", "layer3:1", "layer4:3", "fc:0", "fc:1"],
    "vit": [f"{VIT_LAYER.format(1)}:0@cls", f"{VIT_LAYER.format(3)}:3@cls", f"{VIT_LAYER.format(1)}:5@mean",
            f"{VIT_LAYER.format(3)}:7@mean", "logits:0", "logits:1"],
}
TARGETS = {"sampler_vs_bare": "<= 1.3", "own_module_blank_tile_fraction": "<= 0.05"}


# -- the targets -----------------------------------------------------------------------------------
def small_vit(size: int, num_classes: int = CLASSES) -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=size, patch_size=8, num_layers=4, num_heads=4,
                                                hidden_dim=128, mlp_dim=256, num_classes=num_classes)


def family_target(family: str, size: int) -> nn.Module:
    """The family's network with its input contract, random weights (seed 0)."""
    torch.manual_seed(0)
    if family == "alexnet":
        return AlexNet(num_classes=CLASSES, image_size=size)
    net = torchvision.models.resnet18(num_classes=CLASSES) if family == "resnet18" else small_vit(size)
    return as_target(net, image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)


# -- speed ---------------------------------------------------------------------------------------
def timed_sampler_step(sampler: Sampler, z0: torch.Tensor) -> float:
    """Seconds per step of `sampler.run(z0)`: from the first step's start to the last one's, over
    the steps between (each step starts with its forward, so the forward is where it is stamped)."""
    values = sampler._values
    stamps: list[float] = []

    def stamped(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stamps.append(time.perf_counter())
        return values(*args)

    sampler._forward = stamped
    try:
        sampler.run(z0)
    finally:
        sampler._forward = values
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


class BareStep:
    """One step of the network alone: the batch through the sampler's layers (a fresh `tap` of them)
    and a backward to the input; with a generator, the input is its code and the images are
    G(z) fitted to the target's size.  The objective is the units' plain sum, read where the
    sampler reads them (a conv map's or the patch tokens' mean, the class token, the logit)."""

    def __init__(self, target: nn.Module, units: list[Unit], seeds: int, z0: torch.Tensor,
                 generator: nn.Module | None):
        self.target, self.generator = target, generator
        self.size = target.image_size
        self.prefix = int(getattr(target, "prefix_tokens", 0))
        terms = [u.terms[0] for u in units for _ in range(seeds)]
        self.taps = tap(target, sorted({t.layer for t in terms}))
        # per (layer, place): the batch rows that read it and their units
        self.reads: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for row, term in enumerate(terms):
            rows, cols = self.reads.setdefault((term.layer, term.at or "mean"), ([], []))
            rows.append(row)
            cols.append(term.unit)
        self.reads = {k: (torch.tensor(r), torch.tensor(c)) for k, (r, c) in self.reads.items()}
        self.z0 = z0

    def reduce(self, activation: torch.Tensor, place: str) -> torch.Tensor:
        if activation.ndim == 4:
            return activation.mean((2, 3))
        if activation.ndim == 3:
            return activation[:, 0] if place == "cls" else activation[:, self.prefix:].mean(1)
        return activation

    def __call__(self) -> torch.Tensor:
        z = self.z0.detach().requires_grad_(True)
        images = fit_images(self.generator(z), self.size) if self.generator is not None else z
        acts = self.taps(images)
        value = sum(self.reduce(acts[layer], place)[rows, cols].sum()
                    for (layer, place), (rows, cols) in self.reads.items())
        grad, = torch.autograd.grad(value, z)
        return grad

    def seconds(self, steps: int) -> float:
        """Seconds per bare step over `steps` steps."""
        with torch.enable_grad(), frozen(self.target, self.taps, self.generator):
            start = time.perf_counter()
            for _ in range(steps):
                self()
            return (time.perf_counter() - start) / steps


class Case:
    """One family x method: the Sampler of its batch and the bare step beside it."""

    def __init__(self, family: str, method_name: str, size: int, units_per_layer: int, seeds: int, steps: int,
                 generator_ckpt: str):
        self.family, self.method_name = family, method_name
        self.target = family_target(family, size)
        logits, inner = SPEED_UNITS[family]
        spec = logits[:units_per_layer] + inner[:units_per_layer]
        self.method: Method = load_method(method_config(method_name),
                                          generator_ckpt if method_name == "dgn_am" else None, None, size)
        self.units, _ = units_of(self.target, spec, logits_layer_of(self.target), [], spatial="mean", pre_relu=True)
        self.sampler = sampler_for(self.target, self.units, self.method, seeds=seeds, steps=steps, spatial="mean")
        self.z0 = self.method.start(len(self.units), seeds)
        self.batch = len(self.z0)
        generator = self.method.space.generator if method_name == "dgn_am" else None
        start = self.z0 if generator is not None else self.sampler.render(self.z0).detach()
        self.bare = BareStep(self.target, self.units, seeds, start, generator)
        self.steps = steps
        # The sampler's first `window` steps read the redirected ReLU gradient (method.redirect_relu); a
        # method's whole run (`run_steps`, its own step count) pays for it in those steps only.
        self.window, self.run_steps = self.sampler.settings.redirect_relu, self.method.settings().steps
        self.sampler_s: list[float] = []
        self.steady_s: list[float] = []
        self.bare_s: list[float] = []

    def time_sampler(self, redirect: bool = True) -> float:
        """Seconds per step with the redirected ReLU gradient (the window's steps) or without (after it)."""
        settings = self.sampler.settings
        settings.redirect_relu = self.window if redirect else 0
        try:
            with frozen(self.target, *self.method.modules()):
                return timed_sampler_step(self.sampler, self.z0)
        finally:
            settings.redirect_relu = self.window

    def round(self, sampler_first: bool, keep: bool = True) -> None:
        order: list[Callable[[], float]] = [self.time_sampler, lambda: self.time_sampler(redirect=False),
                                            lambda: self.bare.seconds(self.steps)]
        results = [f() for f in (order if sampler_first else order[::-1])]
        sampler_s, steady_s, bare_s = results if sampler_first else results[::-1]
        if keep:
            self.sampler_s.append(sampler_s)
            self.steady_s.append(steady_s)
            self.bare_s.append(bare_s)

    def figures(self) -> dict[str, float]:
        """Median step times over the rounds; the ratio over a whole run of the method (its window
        steps at the redirected speed, the rest at the steady one), the window's and the steady
        ratios, and the spread of the rounds' own whole-run ratios."""
        window_s, steady_s = statistics.median(self.sampler_s), statistics.median(self.steady_s)
        bare_s = statistics.median(self.bare_s)
        share = min(self.window, self.run_steps) / self.run_steps

        def whole(w: float, st: float) -> float:
            return share * w + (1 - share) * st

        sampler_s = whole(window_s, steady_s)
        rounds = [whole(w, st) / b for w, st, b in zip(self.sampler_s, self.steady_s, self.bare_s)]
        return {"sampler_ms": 1e3 * sampler_s, "window_ms": 1e3 * window_s, "steady_ms": 1e3 * steady_s,
                "bare_ms": 1e3 * bare_s, "ratio": sampler_s / bare_s, "window_ratio": window_s / bare_s,
                "steady_ratio": steady_s / bare_s, "unit_steps_per_s": self.batch / sampler_s,
                "round_min": min(rounds), "round_max": max(rounds)}


# -- a tiny generator ----------------------------------------------------------------------------
TINY_RUN = ["logger=none", "image_size=32", "data.val_size=64", "data.batch_size=64", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]
TINY_CLASSIFIER = [*TINY_RUN, "data.train_size=256", "model.fc6_dim=128", "model.channels=[16,32,48,48,32]",
                   "model.fc7_dim=128"]
TINY_GENERATOR = [*TINY_RUN, "data.train_size=128", "generator.net.stages=[[32,0],[16,0],[8,0]]",
                  "generator.net.fc_dims=[128]", "generator.net.start_channels=32",
                  "generator.discriminator.channels=[8,16,32]", "task.callbacks.samples=null"]


def train_tiny_generator(out: Path) -> str:
    """A 32 px classifier, then a G on its code, one short epoch each, with the project's training."""
    from hydra import compose, initialize_config_dir

    from featvis.jobs.train import train

    def run(folder: str, *overrides: str) -> dict:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"output_dir={out / folder}", *overrides])
        return train(cfg)

    classifier = run("classifier", "task=classifier", *TINY_CLASSIFIER)
    encoder = classifier["best_checkpoint"] or classifier["last_checkpoint"]
    return run("generator", "task=generator", f"encoder.ckpt={encoder}", *TINY_GENERATOR)["last_checkpoint"]


# -- blank tiles in a plain LightningModule ---------------------------------------------------------
def evolution_blank_tiles(family: str, folder: Path, generator: str, out: Path, train_steps: int,
                          synthesis_steps: int, log_frames: int, linear_frames: int, seeds: int) -> dict:
    """Train the family's torchvision network in a PlainClassifier with a FeatureEvolution (dgn_am)
    and count the blank tiles of evolution.json: over every frame, and after step 0."""
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    data = torchvision.datasets.ImageFolder(str(folder), transform=normalize)
    size = data[0][0].shape[-1]
    torch.manual_seed(0)
    net = (torchvision.models.resnet18(num_classes=len(data.classes)) if family == "resnet18"
           else small_vit(size, len(data.classes)))
    module = PlainClassifier(net, lr=0.05 if family == "resnet18" else 0.01)
    train = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, drop_last=True)
    val = torch.utils.data.DataLoader(data, batch_size=32)
    callback = FeatureEvolution(units=EVOLUTION_UNITS[family], method="dgn_am", generator=generator,
                                dirpath=str(out / family), seeds=seeds, steps=synthesis_steps,
                                log_frames=log_frames, linear_frames=linear_frames)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=train_steps, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=str(out / family))
    start = time.perf_counter()
    trainer.fit(module, train, val)
    seconds = time.perf_counter() - start
    frames = json.loads((out / family / "evolution.json").read_text())["frames"]
    later = [f for f in frames if f["step"] > 0]
    blank_at = sorted({(f["step"], f["unit"]) for f in frames if f["blank"]})
    return {"fraction": sum(f["blank"] for f in frames) / len(frames),
            "after_step0": sum(f["blank"] for f in later) / len(later) if later else None,
            "tiles": len(frames), "frames": len({f["step"] for f in frames}), "blank_at": blank_at,
            "seconds": seconds, "callback_seconds": callback.seconds, "image_size": callback.contract["image_size"]}


# -- main ----------------------------------------------------------------------------------------
def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="input side of every target (px)")
    parser.add_argument("--steps", type=int, default=12, help="sampler steps per timed run (and bare steps)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating sampler / bare rounds per case")
    parser.add_argument("--units", type=int, default=4, help="units per layer (two layers) in the speed batch")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per unit in the speed batch")
    parser.add_argument("--generator", help="a generator checkpoint for dgn_am (default: train a tiny one)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--train-steps", type=int, default=30, help="training steps of the callback's runs")
    parser.add_argument("--synthesis-steps", type=int, default=48, help="sampler steps of each callback frame")
    parser.add_argument("--quick", action="store_true", help="the smallest sizes (32 px, 1 unit per layer, "
                                                             "1 seed, 3 steps, 1 round, 2 training steps)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.rounds, args.units, args.seeds = 32, 3, 1, 1, 1
        args.train_steps, args.synthesis_steps = 2, 4
    if args.steps < 2 or min(args.rounds, args.units, args.seeds, args.threads, args.train_steps,
                             args.synthesis_steps) < 1 or args.size < 16:
        parser.error("expected --steps >= 2, --size >= 16 and positive --rounds, --units, --seeds, --threads, "
                     "--train-steps and --synthesis-steps")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(module\(s\) in eval mode|does not have many workers|"
                                              r"smaller than the logging interval|LeafSpec|GPU available).*")
    with tempfile.TemporaryDirectory(prefix="featvis-bench-own-model-") as root:
        return measure(args, Path(root))


def measure(args: argparse.Namespace, out: Path) -> dict:
    """The speed rounds and the two callback runs, writing under `out`; returns the figures."""
    generator = args.generator
    if not generator:
        start = time.perf_counter()
        generator = train_tiny_generator(out / "priors")
        print(f"trained a tiny generator in {time.perf_counter() - start:.1f} s (a temporary one: pass "
              "--generator G.ckpt to use another)", flush=True)

    cases = [Case(f, m, args.size, args.units, args.seeds, args.steps, generator) for f in FAMILIES for m in METHODS]
    for case in cases:  # warm-up: one untimed round each
        case.round(True, keep=False)
    for r in range(args.rounds):
        for case in cases:
            case.round(sampler_first=r % 2 == 0)
    print(f"\nstep times, medians of {args.rounds} rounds of {args.steps} steps; batch {cases[0].batch} images "
          f"({args.units}+{args.units} units x {args.seeds} seeds) at {args.size} px, {args.threads} threads; "
          f"sampler = a whole run of the method ({cases[0].run_steps} steps, the first {cases[0].window} with the "
          "redirected ReLU gradient)")
    print(f"{'family':<10}{'method':<11}{'sampler ms/step':>16}{'window':>8}{'steady':>8}{'bare ms/step':>14}"
          f"{'ratio':>8}{'window':>8}{'steady':>8}{'unit-steps/s':>14}{'ratio range':>14}")
    figures: dict = {}
    for case in cases:
        f = case.figures()
        spread = f"{f['round_min']:.2f}-{f['round_max']:.2f}"
        print(f"{case.family:<10}{case.method_name:<11}{f['sampler_ms']:>16.3f}{f['window_ms']:>8.1f}"
              f"{f['steady_ms']:>8.1f}{f['bare_ms']:>14.3f}{f['ratio']:>8.3f}{f['window_ratio']:>8.3f}"
              f"{f['steady_ratio']:>8.3f}{f['unit_steps_per_s']:>14.1f}{spread:>14}")
        key = f"{case.family}_{case.method_name}"
        figures[f"sampler_vs_bare_{key}"] = round(f["ratio"], 3)
        figures[f"sampler_vs_bare_{key}_redirect_window"] = round(f["window_ratio"], 3)
        figures[f"sampler_vs_bare_{key}_steady"] = round(f["steady_ratio"], 3)
        figures[f"sampler_ms_{key}"] = round(f["sampler_ms"], 3)
        figures[f"bare_ms_{key}"] = round(f["bare_ms"], 3)
        figures[f"unit_steps_per_s_{key}"] = round(f["unit_steps_per_s"], 1)
    for family in FAMILIES:
        figures[f"sampler_vs_bare_{family}"] = max(figures[f"sampler_vs_bare_{family}_{m}"] for m in METHODS)

    folder = shapes_folder(out / "data", args.size, classes=6 if not args.quick else 3,
                           per_class=16 if not args.quick else 6, pool=30)
    log_frames, linear_frames = (4, 2) if not args.quick else (0, 1)  # quick: frames at steps 0 and 2
    blank = {family: evolution_blank_tiles(family, folder, generator, out / "evolution", args.train_steps,
                                           args.synthesis_steps, log_frames, linear_frames, args.seeds)
             for family in ("resnet18", "vit")}
    print(f"\nblank tiles of FeatureEvolution (dgn_am, {args.synthesis_steps} steps a frame, {args.seeds} seed(s)) in "
          f"a plain LightningModule, {args.train_steps} SGD steps on {args.size} px shape PNGs")
    print(f"{'family':<10}{'frames':>7}{'tiles':>7}{'blank':>8}{'after step 0':>14}{'train s':>9}{'callback s':>12}"
          "  blank tiles (step, unit)")
    for family, b in blank.items():
        after = "-" if b["after_step0"] is None else f"{b['after_step0']:.3f}"
        print(f"{family:<10}{b['frames']:>7}{b['tiles']:>7}{b['fraction']:>8.3f}{after:>14}{b['seconds']:>9.1f}"
              f"{b['callback_seconds']:>12.1f}  {b['blank_at'] or 'none'}")
    for family, suffix in (("resnet18", ""), ("vit", "_vit")):
        b = blank[family]
        figures[f"own_module_blank_tile_fraction{suffix}"] = round(b["fraction"], 3)
        figures[f"own_module_blank_tile_fraction{suffix}_after_step0"] = (
            None if b["after_step0"] is None else round(b["after_step0"], 3))
    figures.update(torch_threads=torch.get_num_threads(), size=args.size, batch=cases[0].batch, steps=args.steps,
                   rounds=args.rounds, train_steps=args.train_steps)
    targets = {**{f"sampler_vs_bare_{f}": TARGETS["sampler_vs_bare"] for f in FAMILIES},
               "own_module_blank_tile_fraction": TARGETS["own_module_blank_tile_fraction"],
               "own_module_blank_tile_fraction_vit": TARGETS["own_module_blank_tile_fraction"]}
    print_figures({k: v for k, v in figures.items() if not k.startswith(("sampler_ms", "bare_ms", "unit_steps"))},
                  targets)
    return figures


if __name__ == "__main__":
    print(json.dumps(main()))
