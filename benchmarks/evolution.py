"""Feature evolution on the tiny preset: callback overhead, SIGKILL + resume, the main job.

    python benchmarks/evolution.py [--encoder C.ckpt --generator G.ckpt --prior R.ckpt] [--skip-main-job]

callback_overhead         wall time of the target's training with FeatureEvolution at its default
                          cadence / without it, same data and seed, same run; the mean of
                          two back-to-back pairs, as one pair varies by about 0.05 (target <= 1.15)
callback_time_ratio       (training without + the seconds spent inside the callback, as it
                          records them) / training without: the overhead free of run-to-run noise
resume_frames_lost        frames of the schedule missing after `train.py` was killed with SIGKILL
resume_frames_duplicated  and resumed with ckpt_path=last.ckpt, plus files on disk that
                          evolution.json does not name (targets 0 and 0)
main_job_minutes          `python train.py` from nothing (every stage trained; target <= 20)
blank_tile_fraction       tiles after step 0 of the callback's run that still show their start
                          image (or one flat colour): units no gradient reached (target <= 0.05)
settle_step_by_layer      per layer, the step from which its syntheses stay near their final form
                          (in the judge's feature space), on the target of seed 1
settle_order_consistent   1 when a second target (seed 2) ranks the layers' settle steps the same
lower_layers_settle_first and how often the bootstrap over units and seeds agrees, per seed
unit_difference_by_layer  per layer, the mean grey RMS between two of its units' syntheses at the last
                          frame (seed 1): units that show a feature of their own differ
change_by_layer           per layer, the mean grey RMS between a unit's first and last frames (seed 1):
                          how much its syntheses change over training

Priors not given are trained first (tiny preset).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared checks live in tests/
from featvis.evolution.callback import scheduled_steps
from tests.checks import frame_check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_py(run_dir: Path, *overrides: str, wait: bool = True) -> subprocess.Popen | float:
    """`python train.py` in its own run dir; returns the wall seconds (or the process when not waiting)."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "WANDB_SILENT": "true"}
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}",
               "trainer.enable_progress_bar=false", *overrides]
    start = time.perf_counter()
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if not wait:
        return proc
    if proc.wait() != 0:
        raise SystemExit(f"train.py {' '.join(overrides)} failed; see {log.name}")
    return time.perf_counter() - start


def best_checkpoint(run_dir: Path) -> str:
    found = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    return str(found[-1] if found else run_dir / "checkpoints" / "last.ckpt")


def cadence(overrides: list[str]) -> tuple[int, int]:
    """log_frames and linear_frames of the callback config the run used."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        callback = compose("config", overrides=list(overrides)).callbacks.feature_evolution
        return int(callback.log_frames or 0), int(callback.linear_frames or 0)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("encoder", "generator", "prior"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--skip-main-job", action="store_true")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-evolution-"))
    print(f"runs in {out}")
    encoder = args.encoder
    if not encoder:
        train_py(out / "encoder", "task=classifier", "logger=csv")
        encoder = best_checkpoint(out / "encoder")
    generator, prior = args.generator, args.prior
    if not generator:
        train_py(out / "generator", "task=generator", f"encoder.ckpt={encoder}", "logger=csv")
        generator = best_checkpoint(out / "generator")
    if not prior:
        train_py(out / "prior", "task=prior", f"encoder.ckpt={encoder}", "logger=csv")
        prior = best_checkpoint(out / "prior")
    evolution = ["callbacks=evolution", f"callbacks.feature_evolution.generator.ckpt={generator}",
                 f"callbacks.feature_evolution.prior.ckpt={prior}", f"callbacks.feature_evolution.judge.ckpt={encoder}"]
    target = ["task=classifier", "seed=1", "logger=csv"]

    # Overhead: the same training with and without the callback (default cadence), back to back, twice.
    pairs = [(train_py(out / f"without{k}", *target), train_py(out / ("with" if k == 0 else f"with{k}"), *target,
                                                                  *evolution)) for k in range(2)]
    overhead = sum(w / wo for wo, w in pairs) / len(pairs)
    doc = json.loads((out / "with" / "evolution" / "evolution.json").read_text())
    # Settling on a second, independently initialized target.
    train_py(out / "with-seed2", "task=classifier", "seed=2", "logger=csv", *evolution)
    second = json.loads((out / "with-seed2" / "evolution" / "evolution.json").read_text())
    settles = [{layer: v["settle_step"] for layer, v in d["layers"].items()} for d in (doc, second)]

    # SIGKILL once a frame exists after a checkpoint (step 31, after the one at step 30), then resume
    # from last.ckpt.
    short = [*target, "data.train_size=3000", "trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=null",
             "+callbacks.model_checkpoint.every_n_train_steps=10", *evolution]
    run = out / "killed"
    proc = train_py(run, *short, wait=False)
    state = run / "evolution" / "evolution.json"
    last = run / "checkpoints" / "last.ckpt"
    while proc.poll() is None:  # frames at 0,1,4,13,15,31,46 (default cadence); checkpoints every 10 steps
        if last.exists() and state.exists() and len(json.loads(state.read_text() or "{}").get("steps", [])) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    killed_at = json.loads(state.read_text())["steps"]
    killed_checkpoint_step = int(torch.load(last, weights_only=True)["global_step"])
    train_py(run, *short, f"ckpt_path={last}")
    total = 2 * (3000 // 128)  # epochs x full batches of 128 (the last partial batch is dropped)
    expected = {0} | scheduled_steps(total, *cadence(short))
    lost, duplicated = frame_check(run / "evolution", expected)

    main_minutes = None
    if not args.skip_main_job:
        start = time.perf_counter()
        train_py(out / "main", f"task.stages_dir={out / 'main-stages'}")
        main_minutes = (time.perf_counter() - start) / 60

    print(f"\n{'figure':<32}{'value':>12}")
    without_mean = sum(wo for wo, _ in pairs) / len(pairs)
    print(f"{'seconds inside the callback':<32}{doc['callback_seconds']:>12.1f}")
    for k, (without, with_callback) in enumerate(pairs):
        print(f"{f'pair {k + 1}: without / with (s)':<32}{without:>12.1f} / {with_callback:.1f}  "
              f"({with_callback / without:.3f}x)")
    print(f"{'frames x units x seeds':<32}{len(doc['steps']):>6} x {len(doc['units'])} x {doc['seeds']}")
    print(f"{'killed after frames at steps':<32}{str(killed_at):>12}  (last.ckpt at step {killed_checkpoint_step})")
    print(f"{'main job (minutes)':<32}{'skipped' if main_minutes is None else f'{main_minutes:.2f}':>12}")
    print(f"{'blank tiles after step 0':<32}{doc['blank_tile_fraction']:>12.3f}")
    print(f"\nsettling ({doc['settle_space']}): step from which a layer's syntheses stay near their final form")
    print("and, grey RMS, how far apart two units of a layer are at the last frame and how much a unit moves "
          "from the first frame to the last")
    print(f"{'layer':<12}{'seed 1':>8}{'80% interval':>16}{'seed 2':>8}{'80% interval':>16}"
          f"{'apart, s1':>11}{'change, s1':>12}{'apart, s2':>11}{'change, s2':>12}")
    for layer in doc["layers"]:
        cells = [(d["layers"][layer]["settle_step"], d["layers"][layer]["settle_interval"]) for d in (doc, second)]
        apart = [(figure(d["layers"][layer].get("unit_difference")), figure(d["layers"][layer].get("change")))
                 for d in (doc, second)]
        print(f"{layer:<12}" + "".join(f"{str(s):>8}{str(i):>16}" for s, i in cells)
              + "".join(f"{a:>11}{c:>12}" for a, c in apart))
    for name, d in (("seed 1", doc), ("seed 2", second)):
        print(f"lower layers settle first, {name}: {d['lower_layers_settle_first']} "
              f"(bootstrap agreement {d['lower_layers_settle_first_confidence']})")
    return {"callback_overhead": round(overhead, 3),
            "callback_time_ratio": round((without_mean + doc["callback_seconds"]) / without_mean, 3),
            "resume_frames_lost": lost,
            "resume_frames_duplicated": duplicated,
            "main_job_minutes": None if main_minutes is None else round(main_minutes, 2),
            "blank_tile_fraction": round(doc["blank_tile_fraction"], 3),
            "settle_step_by_layer": settles[0], "settle_step_by_layer_seed2": settles[1],
            "settle_order_consistent": int(settle_order(settles[0]) == settle_order(settles[1])),
            "lower_layers_settle_first": [d["lower_layers_settle_first"] for d in (doc, second)],
            "lower_layers_settle_first_confidence": [d["lower_layers_settle_first_confidence"] for d in (doc, second)],
            "unit_difference_by_layer": {layer: v.get("unit_difference") for layer, v in doc["layers"].items()},
            "change_by_layer": {layer: v.get("change") for layer, v in doc["layers"].items()},
            "unit_difference_by_layer_seed2": {layer: v.get("unit_difference") for layer, v in second["layers"].items()},
            "change_by_layer_seed2": {layer: v.get("change") for layer, v in second["layers"].items()},
            "frames": len(doc["steps"]), "units": len(doc["units"]), "seeds": doc["seeds"]}


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def settle_order(settles: dict[str, int | None]) -> list[int]:
    """Each layer's rank by settle step (tied layers share a rank; an unsettled layer ranks last)."""
    values = [float("inf") if s is None else s for s in settles.values()]
    return [sorted(set(values)).index(v) for v in values]


if __name__ == "__main__":
    print(json.dumps(main()))
