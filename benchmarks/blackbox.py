"""Black-box activation maximization on the tiny preset: CMA-ES and the genetic algorithm in G's
code space against random search, CMA-ES over pixel_fft's spectrum (fourier, first step 0.05) and gradient DGN-AM,
with exact and (CMA-ES, GA) with noisy responses.

    python benchmarks/blackbox.py [--encoder C.ckpt --generator G.ckpt --judge J.ckpt]
                                  [--seeds 1] [--budgets 500 1000 2000 4000] [--fc8 N] [--conv5 4]

Checkpoints not given are trained here with the tiny preset's defaults (the classifier, seed 0,
is the target and G's encoder; the judge is another classifier, seed 1, fc6 of 512).  Units: the
first --fc8 class units of fc8 (default: every class) and --conv5 channels of conv5 (read at the centre), --seeds runs each;
every method maximizes the unit's raw activation (objective.selectivity=0, gradient DGN-AM too), as
a recorded neuron's rate would be.

For each method and budget (image evaluations per run: one search per method at the largest, its
best image kept as each smaller budget is reached; for gradient DGN-AM, a run of as many steps, each
one forward and one backward pass), the best image's activation as a fraction of the unit's top-1 real
validation image (the mean over runs; `beats` is the share of runs at or above 1).  `noisy`: the
search sees a simulated neuron instead, Poisson spike counts at a rate of the rectified activation
(x --gain spikes), and its best-responding image is scored by the exact activation.  Judge transfer:
how often the judge names an fc8 unit's class in its best image at the largest budget.

Speed, on the CPU, with random weights (speed does not depend on what the networks learned):
evaluations per second with every run in one batched call (64 images a call, and 256) against one
run at a time (a generation of one run a call), and the time a
generation's optimizer update takes, batched in torch and (when the `cmaes` package is installed) as
a per-run loop of cmaes.SepCMA and cmaes.CMA, beside the time the networks take for the same
generation, and how close each comes to the peak of a shifted sphere in 1024-d after 150 generations
(ours and cmaes.SepCMA: the same algorithm should land alike).

Prints the tables, then as its last line one JSON object: cmaes_vs_ga_at_2000 (target >= 1.2),
cmaes_vs_real_top1_at_4000 (>= 1.0), cmaes_vs_dgn_am_at_4000, the same three with noisy responses,
<method>_judge_transfer, evaluations_per_second_batched_vs_one (>= 3) and the per-generation times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import print_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.quality import trained  # noqa: E402

import featvis  # noqa: E402
from featvis.blackbox import CMAES, NoisyNeuron, TargetScorer, search  # noqa: E402
from featvis.checkpoints import load_classifier  # noqa: E402
from featvis.synthesis.methods import method_config, units_of  # noqa: E402
from featvis.synthesis.synthesize import load_judge, unit_values  # noqa: E402

SEARCHES = {"cmaes": "dgn_cmaes", "ga": "dgn_ga", "random": "dgn_cmaes"}
RAW = "objective.selectivity=0"
TARGETS = {"cmaes_vs_ga_at_2000": ">= 1.2", "cmaes_vs_real_top1_at_4000": ">= 1.0",
           "evaluations_per_second_batched_vs_one": ">= 3"}


def method_for(name: str, budget: int) -> dict:
    if name == "dgn_am":
        return method_config("dgn_am", RAW)
    if name == "fourier":  # CMA-ES over pixel_fft's spectrum, its first step pixel_fft's step size
        config = method_config("pixel_fft", RAW)
        config["search"] = {"_target_": "featvis.blackbox.CMAES", "evaluations": budget, "sigma": 0.05}
        return config
    config = method_config(SEARCHES[name], RAW, f"search.evaluations={budget}")
    if name == "random":  # random search: every candidate drawn from the code statistics
        config["search"] = {"_target_": "featvis.blackbox.RandomSearch", "evaluations": budget, "population": 32}
    return config


def checkpoints(args: argparse.Namespace, out: Path) -> dict[str, str]:
    found = {"encoder": args.encoder, "generator": args.generator, "judge": args.judge}
    found["encoder"] = found["encoder"] or trained(out / "classifier", "task=classifier", "seed=0")
    found["generator"] = found["generator"] or trained(out / "generator", "task=generator", "seed=0",
                                                       f"encoder.ckpt={found['encoder']}")
    found["judge"] = found["judge"] or trained(out / "judge", "task=classifier", "seed=1", "model.fc6_dim=512")
    return found


def real_top1(target, units, image_size: int) -> torch.Tensor:
    """Each unit's highest raw activation over 1000 real validation shapes."""
    from hydra.utils import instantiate

    from benchmarks.quality import compose_cfg

    data = instantiate(compose_cfg("config", "task=classifier").data, image_size=image_size, val_size=1000)
    data.setup("validate")
    values, _ = unit_values(target, units, data.val_dataloader(), "center", 1000)
    return values.max(0).values


def quality(args: argparse.Namespace, ckpts: dict[str, str]) -> dict[str, float]:
    """Each method's fraction of the real top-1 at every budget (one run at the largest budget per
    method, its best image kept as each smaller budget is reached) and its judge transfer."""
    from featvis.nets.adapters import fit_images
    from featvis.synthesis.methods import load_method

    target, record = load_classifier(ckpts["encoder"])
    judge = load_judge(ckpts["judge"], target=target)
    spec = {"fc8": list(range(min(args.fc8, len(record["class_names"])))), "conv5": list(range(args.conv5))}
    units, _ = units_of(target, spec, "fc8", record["class_names"], "center")
    runs = torch.arange(len(units)).repeat_interleave(args.seeds)
    top1 = real_top1(target, units, target.image_size)[runs]
    exact = TargetScorer(target, units)  # the raw activation
    classes = torch.tensor([u.layer == "fc8" for u in units])[runs]
    class_of = torch.tensor([u.terms[0].unit for u in units])[runs]
    budgets, top = sorted(args.budgets), max(args.budgets)
    figures = {}

    def row(key: str, budget: int, images: torch.Tensor, seconds: float) -> None:
        reached = exact(images, runs).cpu() / top1
        with torch.no_grad():
            named = judge.net(fit_images(images, judge.net.image_size)).argmax(1).cpu() == class_of
        transfer = float(named[classes].float().mean())
        figures[f"{key}@{budget}"], figures[f"{key}_judge@{budget}"] = float(reached.mean()), transfer
        print(key, budget, *(f"{float(v):.3f}" for v in (reached[classes].mean(), reached[~classes].mean(),
                                                        reached.mean(), (reached >= 1).float().mean(), transfer)),
              f"{seconds:.0f}", sep="\t", flush=True)

    for noisy in (False, True):
        for name in [m for m in ("cmaes", "ga", "random", "fourier") if m in args.methods and (not noisy or m in ("cmaes", "ga"))]:
            method = load_method(method_for(name, top), ckpts["generator"], None, target.image_size)
            start = method.start(len(units), args.seeds)
            scorer = NoisyNeuron(exact, gain=args.gain, seed=1) if noisy else exact
            kept = {}

            def keep(evaluations: int, best_z: torch.Tensor, _: torch.Tensor) -> None:
                for budget in budgets:
                    if budget not in kept and evaluations + method.search.size(best_z[0].numel()) > budget:
                        kept[budget] = (best_z.clone(), time.perf_counter() - began)

            began = time.perf_counter()
            search(method.search, method.space, scorer, start, runs, method.operators, target.image_size,
                   on_generation=keep)
            for budget in budgets:
                z, seconds = kept[budget]
                with torch.no_grad():
                    images = fit_images(method.space(z), target.image_size).clamp(0, 1)
                row(f"{name}{'_noisy' if noisy else ''}", budget, images, seconds)
    for sigma in args.sigma_sweep:  # CMA-ES's first step, exact responses, at the smallest budget
        config = method_for("cmaes", budgets[0])
        config["search"]["sigma"] = sigma
        method = load_method(config, ckpts["generator"], None, target.image_size)
        began = time.perf_counter()
        found = search(method.search, method.space, exact, method.start(len(units), args.seeds), runs,
                       method.operators, target.image_size)
        row(f"cmaes_sigma{sigma:g}", budgets[0], found.best, time.perf_counter() - began)
    for budget in args.dgn_am_steps if "dgn_am" in args.methods else []:  # gradient DGN-AM: a step is one forward and one backward pass
        began = time.perf_counter()
        found = featvis.synthesize(target, units, method_for("dgn_am", budget), seeds=args.seeds, steps=budget,
                                   generator=ckpts["generator"], evaluation=False)
        row("dgn_am", budget, found.images, time.perf_counter() - began)
    return figures


def speed(args: argparse.Namespace) -> dict[str, float]:
    """Evaluations per second batched against one run at a time, and a generation's optimizer time."""
    from featvis.nets import AlexNet, CodeStatistics, Generator
    from featvis.synthesis.spaces import CodeSpace

    torch.manual_seed(0)
    target = AlexNet(num_classes=15, image_size=64).eval()
    generator = Generator(1024, fc_dims=[1024], start_channels=128, stages=[[96, 96], [48, 0], [24, 0], [12, 0]],
                          upsample="bilinear", norm="group").eval()  # the tiny preset's G
    stats = CodeStatistics(1024).fit(torch.rand(4096, 1024).relu_() * 2)
    space = CodeSpace(generator, stats)
    units, _ = units_of(target, list(range(10)), "fc8", [], "center")
    scorer = TargetScorer(target, units)
    strategy = CMAES(evaluations=args.speed_evaluations)
    runs = len(units) * args.seeds
    which = torch.arange(len(units)).repeat_interleave(args.seeds)
    start = torch.cat([space.start(torch.Generator().manual_seed(k)) for k in range(runs)])

    def timed(rows: slice, batch_size: int | None = None) -> float:
        begin = time.perf_counter()
        search(strategy, space, scorer, start[rows], which[rows], target_size=64, batch_size=batch_size)
        return time.perf_counter() - begin

    timed(slice(0, 1))  # warm-up
    batched = runs * strategy.evaluations / timed(slice(None))
    batched_256 = runs * strategy.evaluations / timed(slice(None), batch_size=256)
    alone = args.one_at_a_time * strategy.evaluations / sum(timed(slice(r, r + 1)) for r in range(args.one_at_a_time))
    # one generation: the networks' share and the optimizer's
    lam, dim = strategy.size(1024), 1024
    codes = start.repeat_interleave(lam, 0)
    begin = time.perf_counter()
    with torch.no_grad():
        scorer(space(codes), which.repeat_interleave(lam))
    networks = time.perf_counter() - begin
    state = strategy.init(start, torch.ones(dim), lambda n, g: torch.randn(n, dim, generator=g), torch.Generator())
    generator = torch.Generator().manual_seed(0)
    begin = time.perf_counter()
    for _ in range(10):
        x = strategy.ask(state, generator, None)
        strategy.tell(state, x, -x.square().sum(-1), generator)
    optimizer = (time.perf_counter() - begin) / 10
    figures = {"evaluations_per_second_batched": round(batched, 1), "evaluations_per_second_one_run": round(alone, 1),
               "evaluations_per_second_batched_vs_one": round(batched / alone, 2),
               "evaluations_per_second_batched_256_a_call": round(batched_256, 1),
               "generation_seconds_networks": round(networks, 4), "generation_seconds_torch_sep_cmaes": round(optimizer, 4)}
    try:
        import cmaes
        import numpy as np
    except ImportError:
        print("(cmaes is not installed: pip install cmaes to time its per-run loop)")
        return figures
    for name, kind in (("sep", cmaes.SepCMA), ("full", cmaes.CMA)):
        optimizers = [kind(mean=np.zeros(dim), sigma=0.5, population_size=lam, seed=r) for r in range(runs)]
        begin = time.perf_counter()
        for _ in range(3):
            for opt in optimizers:
                told = [(x, -float(np.square(x).sum())) for x in (opt.ask() for _ in range(lam))]
                opt.tell(told)
        figures[f"generation_seconds_cmaes_{name}_loop"] = round((time.perf_counter() - begin) / 3, 4)
    # the same search, ours and the library's: a shifted sphere in 1024-d, 150 generations from 0, sigma 0.1
    peak = torch.linspace(-1, 1, dim)
    library = cmaes.SepCMA(mean=np.zeros(dim), sigma=0.1, population_size=lam, seed=0)
    for _ in range(150):
        library.tell([(x, float(np.square(x - peak.numpy()).sum())) for x in (library.ask() for _ in range(lam))])
    strategy = CMAES(sigma=0.1)
    state = strategy.init(torch.zeros(1, dim), torch.ones(dim), None, generator)
    for _ in range(150):
        x = strategy.ask(state, generator, None)
        strategy.tell(state, x, -(x - peak).square().sum(-1), generator)
    figures["sphere_distance_torch_sep_cmaes"] = round(float((state["mean"][0] - peak).norm()), 3)
    figures["sphere_distance_cmaes_sep"] = round(float(np.linalg.norm(library.mean - peak.numpy())), 3)
    figures["sphere_distance_at_start"] = round(float(peak.norm()), 3)
    return figures


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("encoder", "generator", "judge"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--seeds", type=int, default=1, help="runs per unit")
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--dgn-am-steps", type=int, nargs="+", default=[500, 4000],
                        help="gradient DGN-AM step counts (each its own run: the step size follows the count)")
    parser.add_argument("--fc8", type=int, default=1000, help="fc8 class units (the first classes; default all)")
    parser.add_argument("--conv5", type=int, default=4, help="conv5 channels beside the fc8 class units")
    parser.add_argument("--gain", type=float, default=1.0, help="the simulated neuron's spikes per unit of activation")
    parser.add_argument("--speed-evaluations", type=int, default=480, help="evaluations per run in the speed rows")
    parser.add_argument("--one-at-a-time", type=int, default=4, help="runs timed alone in the speed rows")
    parser.add_argument("--methods", nargs="+", default=["cmaes", "ga", "random", "fourier", "dgn_am"],
                        choices=["cmaes", "ga", "random", "fourier", "dgn_am"], help="a subset of the methods")
    parser.add_argument("--sigma-sweep", type=float, nargs="*", default=[], metavar="SIGMA",
                        help="also CMA-ES with each of these first steps, at the smallest budget")
    parser.add_argument("--skip-quality", action="store_true", help="only the speed rows (no training)")
    args = parser.parse_args()
    if args.seeds < 1 or any(b < 1 for b in args.budgets) or args.conv5 < 0 or args.fc8 < 1:
        parser.error("expected --seeds >= 1, positive --budgets, --fc8 >= 1 and --conv5 >= 0")
    os.environ.setdefault("WANDB_MODE", "disabled")
    figures = speed(args)
    print(json.dumps(figures))
    if not args.skip_quality:
        out = Path(tempfile.mkdtemp(prefix="featvis-bench-blackbox-"))
        ckpts = checkpoints(args, out)
        print(f"checkpoints: {json.dumps(ckpts)}")
        print("method\tbudget\tfc8\tconv5\tall\tbeats\tjudge\tseconds  (fractions of the real top-1)")
        found = quality(args, ckpts)
        everything = set(args.methods) == {"cmaes", "ga", "random", "fourier", "dgn_am"}
        figures.update(summary(found, args) if everything else {})
        figures["curves"] = {key: value for key, value in found.items() if "_judge@" not in key}
    print_figures({k: v for k, v in figures.items() if k != "curves"}, TARGETS)
    return figures


def summary(found: dict[str, float], args: argparse.Namespace) -> dict[str, float]:
    """The JSON's headline figures, from every method's rows."""
    top, mid, steps = max(args.budgets), (2000 if 2000 in args.budgets else max(args.budgets)), max(args.dgn_am_steps)
    return {"cmaes_vs_ga_at_2000": round(found[f"cmaes@{mid}"] / found[f"ga@{mid}"], 3),
            "cmaes_vs_real_top1_at_4000": round(found[f"cmaes@{top}"], 3),
            "cmaes_vs_dgn_am_at_4000": round(found[f"cmaes@{top}"] / found[f"dgn_am@{steps}"], 3),
            "noisy_cmaes_vs_ga_at_2000": round(found[f"cmaes_noisy@{mid}"] / found[f"ga_noisy@{mid}"], 3),
            "noisy_cmaes_vs_real_top1_at_4000": round(found[f"cmaes_noisy@{top}"], 3),
            "cmaes_vs_random_at_4000": round(found[f"cmaes@{top}"] / found[f"random@{top}"], 3),
            "cmaes_vs_fourier_cmaes_at_4000": round(found[f"cmaes@{top}"] / found[f"fourier@{top}"], 3),
            **{f"{name}_judge_transfer": round(found[f"{name}_judge@{top}"], 3)
               for name in ("cmaes", "ga", "random", "fourier", "cmaes_noisy", "ga_noisy")},
            "dgn_am_judge_transfer": round(found[f"dgn_am_judge@{steps}"], 3)}


if __name__ == "__main__":
    print(json.dumps(main()))
