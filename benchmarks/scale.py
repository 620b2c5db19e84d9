"""Sweeps and scale on the CPU: the caffenet preset's sampler step, DDP on 2 processes, a joblib sweep.

    python benchmarks/scale.py [--out DIR] [--units 8] [--steps 3]

1. CaffeNet scale (experiment=caffenet, random weights: speed and memory do not depend on what
   the networks learned): the 1000-way CaffeNet at 227 px and the DeePSiM fc6 generator, one
   batched DGN-AM step for `--units` units, in a subprocess of its own so that its peak RSS
   (resource.getrusage) is that run's alone.
2. DDP: `train.py trainer=ddp trainer.accelerator=cpu trainer.devices=2` for the classifier
   (with the FeatureEvolution callback once G exists: the encoder run has it off), the
   generator and the prior (32 px shapes), each checked for its checkpoint, metrics.json and a
   single run dir.
3. A 4-point joblib sweep of PPGN's weights (`visualize.py -m hydra/launcher=joblib
   method.step.eps1=1,0.1 method.step.eps2=1e-3,0.1`) on those networks, judged by an independent classifier,
   summarized with `python -m featvis.tools.summary` (its table is printed).

Prints a table, then, as its last line, one JSON object:
  caffenet_am_step_seconds  one batched DGN-AM step (CaffeNet + DeePSiM G, 8 units, CPU)
  caffenet_peak_rss_gb      peak resident memory of that run              (target <= 8)
  ddp_two_process_ok        1 when the 2-process CPU run of each task completes (target 1)
  sweep_jobs_completed      jobs of the 4-point joblib sweep with a metrics.json (target 4)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import print_figures

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["image_size=32", "data.train_size=1500", "data.val_size=300", "data.batch_size=50"]
NET = ["model.fc6_dim=128", "model.fc7_dim=128", "model.channels=[16,32,48,48,32]", "model.dropout=0.2"]
PRIORS = ["generator.net.stages=[[32,0],[16,0],[8,0]]", "generator.net.fc_dims=[128]",
          "generator.net.start_channels=32", "generator.discriminator.channels=[8,16,32]",
          "dae.hidden=[64,32,64]", "encoder.stats_images=1500"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false"]


def am_step_child(units: int, steps: int) -> None:
    """In its own process: build the caffenet preset's target and G, time the batched DGN-AM step."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from featvis.nets import CodeStatistics
    from featvis.synthesis.objectives import ObjectiveBatch, Term
    from featvis.synthesis.sampler import Sampler, SamplerSettings
    from featvis.synthesis.priors import ClipCodes, Decay
    from featvis.synthesis.spaces import CodeSpace

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=caffenet", "task=generator", "data.root=/unused"])
    torch.manual_seed(0)
    target = instantiate(cfg.model, num_classes=1000).eval()
    generator = instantiate(cfg.generator.net, code_dim=4096).eval()
    stats = CodeStatistics(4096).fit(torch.rand(1024, 4096).relu_() * 2)
    classes = [(97 * u) % 1000 for u in range(units)]

    def sampler(n_steps: int) -> Sampler:
        objectives = ObjectiveBatch([[Term("fc8", c)] for c in classes], {"fc8": 1000})
        settings = SamplerSettings(steps=n_steps, lr=1.0, lr_end=0.01, normalize_gradient=True)
        return Sampler(target, objectives, settings, space=CodeSpace(generator, stats),
                       operators=[ClipCodes(stats.quantile(0.99)), Decay(0.99)])

    z0 = stats.sample(units, torch.Generator().manual_seed(0))
    sampler(1).run(z0)  # warm-up: first-call allocations
    start = time.perf_counter()
    result = sampler(steps).run(z0)
    seconds = (time.perf_counter() - start) / steps
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_kb / 2**20, "images": list(result.last.shape),
                      "threads": torch.get_num_threads()}))


def run(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
    print(f"  {script} {' '.join(a for a in args if a.startswith(('task=', 'trainer=', '-m', 'seed')))}: "
          f"{status}, {time.perf_counter() - start:.0f} s", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc


def ddp_run_ok(proc: subprocess.CompletedProcess, run_dir: Path) -> bool:
    siblings = [p for p in run_dir.parent.iterdir() if p.is_dir()]
    return (proc.returncode == 0 and (run_dir / "checkpoints" / "last.ckpt").is_file()
            and (run_dir / "metrics.json").is_file() and siblings == [run_dir])


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder, removed)")
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="DGN-AM steps timed (after one warm-up step)")
    parser.add_argument("--am-step-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.am_step_child:
        am_step_child(args.units, args.steps)
        sys.exit(0)

    print(f"1. caffenet preset: one batched DGN-AM step, {args.units} units", flush=True)
    child = subprocess.run([sys.executable, __file__, "--am-step-child", "--units", str(args.units),
                            "--steps", str(args.steps)], capture_output=True, text=True)
    if child.returncode != 0:
        print(child.stderr[-3000:], file=sys.stderr)
    am = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {}

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="featvis-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"2. DDP, 2 CPU processes per task (runs in {out})", flush=True)
    ok = []
    stages = {}
    for name, extra in (("classifier", [*SHAPES, *NET, "trainer.max_epochs=5"]),):
        folder = out / "ddp" / name
        folder.mkdir(parents=True, exist_ok=True)
        proc = run("train.py", folder, "task=classifier", *DDP, *extra, "logger=csv", f"hydra.run.dir={folder / 'run'}")
        ok.append(ddp_run_ok(proc, folder / "run"))
        stages[name] = folder / "run" / "checkpoints" / "last.ckpt"
    encoder = f"encoder.ckpt={stages['classifier']}"
    for task, extra in (("generator", ["trainer.max_epochs=2", "task.callbacks.samples.every_n_steps=10"]),
                        ("prior", ["trainer.max_epochs=10"])):
        folder = out / "ddp" / task
        folder.mkdir(parents=True, exist_ok=True)
        proc = run("train.py", folder, f"task={task}", encoder, *DDP, *SHAPES, *PRIORS, *extra, "logger=csv",
                   f"hydra.run.dir={folder / 'run'}")
        ok.append(ddp_run_ok(proc, folder / "run"))
        stages[task] = folder / "run" / "checkpoints" / "last.ckpt"
    # The classifier again, now with the FeatureEvolution callback on the generator just trained.
    folder = out / "ddp" / "classifier_evolution"
    folder.mkdir(parents=True, exist_ok=True)
    evo = "callbacks.feature_evolution"
    proc = run("train.py", folder, "task=classifier", *DDP, *SHAPES, *NET, "trainer.max_epochs=1", "logger=wandb",
               "callbacks=evolution", f"{evo}.generator.ckpt={stages['generator']}", f"{evo}.steps=10",
               f"hydra.run.dir={folder / 'run'}")
    ok.append(ddp_run_ok(proc, folder / "run") and (folder / "run" / "evolution" / "index.html").is_file())
    ddp_ok = int(all(ok))

    print("3. a 4-point joblib sweep of PPGN's weights", flush=True)
    judge_dir = out / "judge"
    judge_dir.mkdir(exist_ok=True)
    run("train.py", judge_dir, "task=classifier", *SHAPES, *NET, "model.fc6_dim=96", "seed=1", "trainer.max_epochs=5",
        "logger=csv", "trainer.enable_progress_bar=false", f"hydra.run.dir={judge_dir / 'run'}")
    sweep = out / "sweep"
    start = time.perf_counter()
    run("visualize.py", out, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=ppgn",
        "method.step.eps1=1,0.1", "method.step.eps2=1e-3,0.1", f"target.ckpt={stages['classifier']}",
        f"generator.ckpt={stages['generator']}", f"prior.ckpt={stages['prior']}",
        f"judge.ckpt={judge_dir / 'run' / 'checkpoints' / 'last.ckpt'}", "units=[0,3,6,9,12]",
        "seeds=4", "steps=100", "gif=false", "evaluation.real_images=300", "logger=wandb",
        f"hydra.sweep.dir={sweep}")
    sweep_minutes = (time.perf_counter() - start) / 60
    completed = sum((job / "metrics.json").is_file() for job in sweep.iterdir() if job.is_dir()) if sweep.is_dir() else 0
    summary = subprocess.run([sys.executable, "-m", "featvis.tools.summary", str(sweep)], capture_output=True, text=True)
    print(summary.stdout if summary.returncode == 0 else summary.stderr)

    figures = {
        "caffenet_am_step_seconds": round(am.get("seconds", float("nan")), 3),
        "caffenet_peak_rss_gb": round(am.get("peak_rss_gb", float("nan")), 2),
        "ddp_two_process_ok": ddp_ok,
        "sweep_jobs_completed": completed,
        "ddp_runs_ok": f"{sum(ok)}/{len(ok)}",
        "sweep_minutes": round(sweep_minutes, 2),
        "caffenet_units": args.units,
        "caffenet_images": "x".join(map(str, am.get("images", []))),
        "torch_threads": am.get("threads"),
        "device": "cpu",
    }
    targets = {"caffenet_peak_rss_gb": "<= 8", "ddp_two_process_ok": "1", "sweep_jobs_completed": "4"}
    print_figures(figures, targets)
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return {k: figures[k] for k in ("caffenet_am_step_seconds", "caffenet_peak_rss_gb", "ddp_two_process_ok",
                                    "sweep_jobs_completed")}


if __name__ == "__main__":
    print(json.dumps(main()))
