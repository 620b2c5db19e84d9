"""Fault injection shared by the tests and `benchmarks/faults.py`: the bad inputs, crafted
checkpoints and kill trials (tiny preset, CPU). The figures are described in benchmarks/faults.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from featvis.checkpoints import FORMAT_VERSION, prior_record, read_checkpoint
from featvis.evolution.callback import scheduled_steps
from featvis.nets.codes import CodeDAE, CodeStatistics
from featvis.tools.integrity import scan
from tests.checks import frame_check
from tests.preloaded import Server, TimedOut, servers

ROOT = Path(__file__).resolve().parents[1]
ERROR_PREFIX = "featvis: error:"

# -- fixtures: small checkpoints and broken inputs -----------------------------------------------

SMALL_CLASSIFIER = ["task=classifier", "logger=none", "image_size=32", "data.train_size=640", "data.val_size=128",
                    "data.batch_size=64", "trainer.max_epochs=2", "model.fc6_dim=128",
                    "model.channels=[16,32,48,48,32]", "model.fc7_dim=128"]
SMALL_PRIOR = ["logger=none", "image_size=32", "data.train_size=256", "data.val_size=64", "data.batch_size=64",
               "trainer.max_epochs=1", "generator.net.stages=[[32,0],[16,0],[8,0]]", "generator.net.fc_dims=[128]",
               "generator.net.start_channels=32", "generator.discriminator.channels=[8,16,32]",
               "dae.hidden=[64,32,64]"]


def command(script: str, run_dir: Path, args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / script), f"hydra.run.dir={run_dir}", *args]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", **extra}
    return {k: v for k, v in env.items() if v is not None}


def train_checkpoints(folder: Path) -> dict[str, str]:
    """A 32 px classifier, and a generator and a DAE prior on it, trained by train.py."""
    paths = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, args in (("classifier", SMALL_CLASSIFIER),
                       ("generator", ["task=generator", *SMALL_PRIOR]), ("prior", ["task=prior", *SMALL_PRIOR])):
        extra = [] if name == "classifier" else [f"encoder.ckpt={paths['classifier']}"]
        run = folder / name
        proc = subprocess.run(command("train.py", run, [*args, *extra, "trainer.enable_progress_bar=false"]),
                              env=environment(), capture_output=True, text=True, cwd=folder)
        if proc.returncode != 0:
            raise SystemExit(f"training the {name} fixture failed:\n{proc.stderr[-3000:]}")
        paths[name] = str(run / "checkpoints" / "last.ckpt")
    return paths


class Exploit:
    """Unpickling this object would create `marker`: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Checkpoints whose pickle runs code: as a whole, inside the featvis record, inside the state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    crafted = {
        "whole": Exploit(marker),
        "record": {"featvis": {"kind": "classifier", "net": Exploit(marker)}, "state_dict": {}},
        "weights": {"featvis": {"kind": "generator"}, "state_dict": {"generator.w": Exploit(marker)}},
    }
    paths = {}
    for name, payload in crafted.items():
        paths[name] = folder / f"evil_{name}.ckpt"
        torch.save(payload, paths[name])
    return paths


def broken_inputs(folder: Path, ckpts: dict[str, str]) -> dict[str, str]:
    """The placeholders of the bad-input table: real checkpoints and crafted broken things."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "truncated.ckpt"
    data = Path(ckpts["classifier"]).read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    # A DAE prior over another code (fc6 of 64 units) than the generator's.
    dae, stats = CodeDAE(code_dim=64, hidden=[32]), CodeStatistics(64)
    encoder = {**read_checkpoint(ckpts["prior"])["featvis"]["encoder"], "code_dim": 64}
    other_code = folder / "other_code_prior.ckpt"
    torch.save({"featvis": prior_record(dae, encoder),
                "state_dict": {**{f"dae.{k}": v for k, v in dae.state_dict().items()},
                               **{f"code_stats.{k}": v for k, v in stats.state_dict().items()}}}, other_code)
    blocker = folder / "a_file"
    blocker.write_text("not a folder")
    trees = {"empty": {}, "imageless": {"notes.txt": b"no images here"},
             "corrupt_image": {**{f"ok{i}.png": None for i in range(4)}, "broken.png": b"\x89PNG\r\n\x1a\n garbage"}}
    for name, files in trees.items():
        for split in ("train", "val"):
            cls = folder / name / split / "circle"
            cls.mkdir(parents=True, exist_ok=True)
            for file_name, content in files.items():
                if content is None:
                    Image.new("RGB", (40, 40), (200, 30, 30)).save(cls / file_name)
                else:
                    (cls / file_name).write_bytes(content)
        if not files:
            shutil.rmtree(folder / name / "train" / "circle")
            shutil.rmtree(folder / name / "val" / "circle")
    evil = malicious_checkpoints(folder / "evil", folder / "evil" / "PWNED")
    return {**ckpts, "truncated": str(corrupt), "other_code_prior": str(other_code), "blocker": str(blocker),
            **{f"{name}_data": str(folder / name) for name in trees}, "evil": str(evil["whole"]),
            "evil_record": str(evil["record"]), "evil_weights": str(evil["weights"]),
            **damaged_inputs(folder / "damaged", ckpts)}


def damaged_inputs(folder: Path, ckpts: dict[str, str]) -> dict[str, str]:
    """The placeholders of the damaged-input table: files that exist but are empty, newer, cut or
    of another shape than expected, and images of other modes than RGB."""
    import numpy as np
    from PIL import Image

    from featvis.nets.deepsim_weights import LAYERS

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"empty_ckpt": folder / "empty.ckpt", "future_ckpt": folder / "future.ckpt",
             "deepsim_missing": folder / "missing" / "upconvGAN_fc6.pt",
             "deepsim_extra": folder / "extra" / "upconvGAN_fc6.pt", "direction": folder / "direction7.npy",
             "magnitude": folder / "maco_magnitude.pt", "mode_mix_data": folder / "mode_mix",
             "evolution_run": folder / "evolution_run"}
    paths["empty_ckpt"].write_bytes(b"")
    classifier = read_checkpoint(ckpts["classifier"])
    torch.save({**classifier, "featvis": {**classifier["featvis"], "format": FORMAT_VERSION + 1}},
               paths["future_ckpt"])
    # The published key names with tiny tensors: the key names are checked before any shape.
    published = {f"{name}.{part}": torch.zeros(1) for name in LAYERS for part in ("weight", "bias")}
    for name, state in (("deepsim_missing", {k: v for k, v in published.items() if k != "deconv3.bias"}),
                        ("deepsim_extra", {**published, "defc8.weight": torch.zeros(1)})):
        paths[name].parent.mkdir(exist_ok=True)
        torch.save(state, paths[name])
    np.save(paths["direction"], np.ones(7, dtype=np.float32))  # conv5 of the small classifier has 32 channels
    torch.save({"magnitude": torch.ones(3, 16, 9)}, paths["magnitude"])  # a 16 px spectrum; the runs are at 32 px
    # RGB images, and in one class an RGBA, a grey and a 16-bit grey one (mid-grey: 32768 of 65535).
    odd = {"rgba.png": Image.new("RGBA", (40, 40), (200, 30, 30, 128)), "grey.png": Image.new("L", (40, 40), 90),
           "deep.png": Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))}
    for split in ("train", "val"):
        for cls in ("circle", "square"):
            target = paths["mode_mix_data"] / split / cls
            target.mkdir(parents=True, exist_ok=True)
            colour = (200, 30, 30) if cls == "circle" else (30, 30, 200)
            for i in range(2):
                Image.new("RGB", (40, 40), colour).save(target / f"ok{i}.png")
            if (split, cls) == ("train", "circle"):
                for file_name, image in odd.items():
                    image.save(target / file_name)
    # A classifier run with the FeatureEvolution callback as a kill leaves it, its evolution.json
    # damaged: the classifier fixture's checkpoint with the callback's state of one frame (cheaper
    # than training one), and the record cut in half.
    run = paths["evolution_run"]
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "evolution").mkdir(exist_ok=True)
    frame = {"step": 0, "epoch": 0, "unit": "fc8:0", "layer": "fc8", "seed": 0,
             "file": "frames/step0000000/fc8-0_seed0.png"}
    state = {"format": 1, "z0": None, "noise_seed": 0, "frames": [frame]}
    torch.save({**classifier, "callbacks": {**classifier.get("callbacks", {}), "FeatureEvolution": state}},
               run / "checkpoints" / "last.ckpt")
    record = json.dumps({"format": 1, "method": "dgn_am", "steps": [0], "frames": [frame]}, indent=1)
    (run / "evolution" / "evolution.json").write_text(record[: len(record) // 2])
    return {name: str(path) for name, path in paths.items()}


# -- bad inputs --------------------------------------------------------------------------------

VISUALIZE = {"method": "dgn_am", "target.ckpt": "{classifier}", "generator.ckpt": "{generator}", "layer": "fc8",
             "units": "[0]", "seeds": "1", "steps": "2", "evaluation.real_images": "0", "gif": "false",
             "device": "cpu"}
TRAIN = {"task": "classifier", "logger": "none", "image_size": "32", "data.train_size": "64", "data.val_size": "32",
         "data.batch_size": "32", "trainer.max_epochs": "1", "trainer.enable_progress_bar": "false",
         "model.channels": "[16,32,48,48,32]", "model.fc6_dim": "128", "model.fc7_dim": "128"}
FOLDER_DATA = {"data": "imagefolder", "data.train_size": None, "data.val_size": None}  # no sizes: a folder
OFFLINE_FALLBACK = {"WANDB_MODE": None, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "0" * 40}


@dataclass(frozen=True)
class BadInput:
    name: str
    script: str                     # train.py or visualize.py
    changes: dict[str, str | None]  # over the script's good command line; None drops the key
    names: str                      # what the error line must contain (the bad value)
    env: dict[str, str | None] = field(default_factory=dict)
    goes_on: bool = False           # not an error: the job goes on (exit 0) and says so in one line naming `names`


BAD_INPUTS = [
    BadInput("missing checkpoint", "visualize.py", {"target.ckpt": "/no/such/target.ckpt"}, "/no/such/target.ckpt"),
    BadInput("truncated checkpoint", "visualize.py", {"target.ckpt": "{truncated}"}, "{truncated}"),
    BadInput("generator given as target", "visualize.py", {"target.ckpt": "{generator}"},
             "is a generator checkpoint; expected a classifier"),
    BadInput("classifier given as generator", "visualize.py", {"generator.ckpt": "{classifier}"},
             "is a classifier checkpoint; expected a generator"),
    BadInput("prior of another code", "visualize.py", {"method": "ppgn", "prior.ckpt": "{other_code_prior}"},
             "size 64"),
    BadInput("unknown layer", "visualize.py", {"layer": "conv9"}, "conv9"),
    BadInput("unit out of range", "visualize.py", {"units": "[99]"}, "99"),
    BadInput("negative step size", "visualize.py", {"method.step.lr": "-1"}, "method.step.lr=-1"),
    BadInput("NaN step size", "visualize.py", {"method.step.eps1": "nan"}, "method.step.eps1=nan"),
    BadInput("zero steps", "visualize.py", {"steps": "0"}, "steps=0"),
    BadInput("unknown method", "visualize.py", {"method": "nosuch"}, "method=nosuch"),
    BadInput("unwritable output dir", "visualize.py", {"output_dir": "{blocker}/out"}, "{blocker}/out"),
    BadInput("checkpoint that runs code", "visualize.py", {"target.ckpt": "{evil}"}, "{evil}"),
    BadInput("empty data folder", "train.py", {**FOLDER_DATA, "data.root": "{empty_data}"},
             "{empty_data}/train"),
    BadInput("image-less data folder", "train.py", {**FOLDER_DATA, "data.root": "{imageless_data}"},
             "{imageless_data}/train"),
    BadInput("non-image file among images", "train.py", {**FOLDER_DATA, "data.root": "{corrupt_image_data}"},
             "broken.png"),
    BadInput("encoder size mismatch", "train.py", {"task": "generator", "encoder.ckpt": "{classifier}",
                                                   "image_size": "64"}, "image_size=64"),
    BadInput("encoder of the wrong kind", "train.py", {"task": "prior", "encoder.ckpt": "{generator}"},
             "expected a classifier"),
    BadInput("resume from a truncated checkpoint", "train.py", {"ckpt_path": "{truncated}"}, "{truncated}"),
    BadInput("unknown config key", "train.py", {"nosuch_key": "1"}, "nosuch_key"),
    BadInput("unwritable run dir", "train.py", {"hydra.run.dir": "{blocker}/run"}, "{blocker}/run"),
    BadInput("wandb online without network", "train.py", {"logger": "wandb", "logger.offline": "false"},
             "wandb server http://127.0.0.1:9 is unreachable", env=OFFLINE_FALLBACK, goes_on=True),
]

EVOLUTION = "callbacks.feature_evolution"
RESUME_EVOLUTION = {"hydra.run.dir": "{evolution_run}", "ckpt_path": "last", "callbacks": "evolution",
                    f"{EVOLUTION}.generator.ckpt": "{generator}", f"{EVOLUTION}.units": "[fc8:0]",
                    f"{EVOLUTION}.steps": "2"}

# Inputs that exist and look right but are damaged: benchmarks/faults.py counts them apart.
DAMAGED_INPUTS = [
    BadInput("zero-byte checkpoint", "visualize.py", {"target.ckpt": "{empty_ckpt}"}, "{empty_ckpt} is empty"),
    BadInput("checkpoint of a newer format", "visualize.py", {"target.ckpt": "{future_ckpt}"},
             f"{{future_ckpt}} is featvis format {FORMAT_VERSION + 1}; expected format <= {FORMAT_VERSION}"),
    BadInput("DeePSiM weights missing a key", "visualize.py", {"generator.ckpt": "{deepsim_missing}"},
             "{deepsim_missing} lacks deconv3.bias"),
    BadInput("DeePSiM weights with an extra key", "visualize.py", {"generator.ckpt": "{deepsim_extra}"},
             "{deepsim_extra} holds defc8.weight"),
    BadInput("RGBA grey and 16-bit images among RGB ones", "train.py",
             {**FOLDER_DATA, "data.root": "{mode_mix_data}"},
             "converting 3 of 11 images of {mode_mix_data} to RGB as they load (1 I;16, 1 L, 1 RGBA)", goes_on=True),
    BadInput("resume with a damaged evolution.json", "train.py", RESUME_EVOLUTION,
             "{evolution_run}/evolution/evolution.json is not valid JSON"),
    BadInput("direction of the wrong length", "visualize.py", {"units": "['conv5:direction={direction}']"},
             "{direction} has 7 values; expected 32"),
    BadInput("MACO magnitude of the wrong shape", "visualize.py",
             {"method": "pixel_maco", "method.space.magnitude": "{magnitude}"}, "method.space.magnitude={magnitude}"),
]


def run_bad_input(case: BadInput, inputs: dict[str, str], workdir: Path, server: Server | None = None) -> dict:
    """Run one case, as a subprocess or forked from a preloaded `server` (tests/preloaded.py);
    {"clean": bool, "why": str, "seconds": float}."""
    run_dir = workdir / case.name.replace(" ", "_")
    base = dict(VISUALIZE if case.script == "visualize.py" else TRAIN)
    merged = {**base, **case.changes}
    run_dir_arg = (merged.pop("hydra.run.dir", None) or str(run_dir)).format(**inputs)
    args = [f"{k}={v.format(**inputs)}" for k, v in merged.items() if v is not None]
    start = time.perf_counter()
    argv = [f"hydra.run.dir={run_dir_arg}", *args]
    try:
        if server is None:
            proc = subprocess.run([sys.executable, str(ROOT / case.script), *argv], env=environment(**case.env),
                                  capture_output=True, text=True, cwd=workdir, timeout=120)
        else:
            proc = server.run(case.script, argv, environment(**case.env), workdir, timeout=120)
    except (subprocess.TimeoutExpired, TimedOut):
        return {"clean": False, "why": "no answer within 120 s", "seconds": 120.0}
    seconds = time.perf_counter() - start
    named = case.names.format(**inputs)
    errors = [line for line in proc.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                     if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".lock") if run_dir.is_dir() else []
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if named in line]
    if case.goes_on:
        problems = [proc.returncode != 0 and f"exit {proc.returncode}", errors and f"{len(errors)} error lines",
                    len(said) != 1 and f"{len(said)} lines name {named!r}", seconds > 60 and f"took {seconds:.0f} s"]
    else:
        problems = [proc.returncode == 0 and "exit 0",
                    len(errors) != 1 and f"{len(errors)} error lines",
                    errors and named not in errors[0] and f"error does not name {named!r}",
                    errors and "expected" not in errors[0] and "error does not say what was expected",
                    "Traceback" in proc.stderr and "a traceback",
                    written and f"wrote {written[:3]}"]
    problems = [p for p in problems if p]
    why = "; ".join(problems) if problems else (errors[0] if errors else said[0])
    return {"clean": not problems, "why": why, "seconds": seconds, "stderr": proc.stderr[-1500:]}


def run_bad_inputs(inputs: dict[str, str], workdir: Path, cases: list[BadInput] = BAD_INPUTS + DAMAGED_INPUTS,
                   preload: bool = False) -> list[dict]:
    """One row per case: run_bad_input's, with the case's name and whether it is a damaged input.
    With `preload`, each case is forked from an interpreter that has imported featvis already: the
    same runs without the imports' seconds (the benchmark times plain subprocesses)."""
    def row(case: BadInput, server: Server | None = None) -> dict:
        return {"case": case.name, "damaged": case in DAMAGED_INPUTS, **run_bad_input(case, inputs, workdir, server)}

    with ThreadPoolExecutor(max_workers=2) as pool:  # one process per core
        if not preload:
            return list(pool.map(row, cases))
        with servers(2, workdir / ".preloaded") as idle:
            def on_a_server(case: BadInput) -> dict:
                server = idle.get()
                try:
                    return row(case, server)
                finally:
                    idle.put(server)

            return list(pool.map(on_a_server, cases))


def bad_input_counts(rows: list[dict]) -> dict[str, int]:
    """The benchmark's figures: cases tried and clean, the bad inputs and the damaged ones apart."""
    counts = {}
    for kind, damaged in (("bad", False), ("damaged", True)):
        picked = [row for row in rows if row["damaged"] == damaged]
        counts[f"{kind}_inputs_tried"] = len(picked)
        counts[f"{kind}_inputs_clean"] = sum(row["clean"] for row in picked)
    return counts


def malicious_loads(evil: dict[str, str]) -> dict[str, bool]:
    """Every featvis loader on every crafted checkpoint: {loader/checkpoint: refused}."""
    from featvis.checkpoints import load_classifier, load_generator, load_prior
    from featvis.errors import CheckpointError

    refused = {}
    for loader in (read_checkpoint, load_classifier, load_generator, load_prior):
        for name, path in evil.items():
            try:
                loader(path)
                refused[f"{loader.__name__}/{name}"] = False
            except CheckpointError:
                refused[f"{loader.__name__}/{name}"] = True
    return refused


# -- SIGKILL and re-run -------------------------------------------------------------------------

@dataclass
class Stage:
    """A command that is killed and run again; `check` says whether its run dir is complete."""
    name: str
    script: str
    args: Callable[[dict[str, str]], list[str]]
    rerun: list[str]
    check: Callable[[Path], dict]


EVOLUTION_STEPS = 2 * (640 // 64)  # epochs x batches of the classifier stage
EVOLUTION_FRAMES = 5


def _classifier_args(inputs: dict[str, str]) -> list[str]:
    evolution = "callbacks.feature_evolution"
    return [*SMALL_CLASSIFIER, "callbacks=evolution", f"{evolution}.generator.ckpt={inputs['generator']}",
            f"{evolution}.units=[conv5:0,fc8:0,fc8:1]", f"{evolution}.steps=4", f"{evolution}.log_frames={EVOLUTION_FRAMES}",
            f"{evolution}.linear_frames=2", f"{evolution}.every_n_steps=3", f"{evolution}.live_report=true",
            "callbacks.model_checkpoint.monitor=null",
            "+callbacks.model_checkpoint.every_n_train_steps=4", "trainer.enable_progress_bar=false"]


def _check_classifier(run_dir: Path) -> dict:
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    expected = {0} | scheduled_steps(EVOLUTION_STEPS, EVOLUTION_FRAMES, 2, 3)
    lost, duplicated = frame_check(run_dir / "evolution", expected)
    return {"complete": last["global_step"] == EVOLUTION_STEPS and (run_dir / "evolution" / "index.html").is_file(),
            "frames_lost": lost, "frames_duplicated": duplicated}


GENERATOR_EPOCHS = 3


def _generator_args(inputs: dict[str, str]) -> list[str]:
    return ["task=generator", f"encoder.ckpt={inputs['classifier']}", *SMALL_PRIOR,
            f"trainer.max_epochs={GENERATOR_EPOCHS}", "task.callbacks.samples.every_n_steps=2",
            "callbacks.model_checkpoint.monitor=null", "+callbacks.model_checkpoint.every_n_train_steps=4",
            "trainer.enable_progress_bar=false"]


def _check_generator(run_dir: Path) -> dict:
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    # "processed": Lightning counts a batch completed only after the checkpoint hooks of its end
    batches = last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    return {"complete": batches == GENERATOR_EPOCHS * (256 // 64) and any((run_dir / "samples").glob("*.png")),
            "frames_lost": 0, "frames_duplicated": 0}


VISUALIZE_UNITS, VISUALIZE_SEEDS = 6, 3


def _visualize_args(inputs: dict[str, str]) -> list[str]:
    return ["method=dgn_am", f"target.ckpt={inputs['classifier']}", f"generator.ckpt={inputs['generator']}",
            f"units=[{','.join(map(str, range(VISUALIZE_UNITS)))}]", f"seeds={VISUALIZE_SEEDS}", "steps=20",
            "record_every=2", "evaluation.real_images=0", "device=cpu"]


def _check_visualize(run_dir: Path) -> dict:
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return {"complete": False, "frames_lost": 0, "frames_duplicated": 0}
    results = json.loads(metrics.read_text())["results"]
    files = [run_dir / f for r in results for f in r["files"].values()]
    complete = (len(results) == VISUALIZE_UNITS * VISUALIZE_SEEDS and all(f.is_file() for f in files)
                and len(list((run_dir / "gifs").glob("*.gif"))) == VISUALIZE_UNITS and (run_dir / "grid.png").is_file())
    return {"complete": complete, "frames_lost": 0, "frames_duplicated": 0}


STAGES = [Stage("classifier+evolution", "train.py", _classifier_args, ["ckpt_path=last"], _check_classifier),
          Stage("generator", "train.py", _generator_args, ["ckpt_path=last"], _check_generator),
          Stage("visualize", "visualize.py", _visualize_args, [], _check_visualize)]


class Launcher:
    """Starts a stage's command as a subprocess, or forked from a preloaded `server`
    (tests/preloaded.py: the same run without importing torch and Lightning first)."""

    def __init__(self, server: Server | None = None):
        self.server, self.proc = server, None

    def start(self, stage: Stage, args: list[str], run_dir: Path, log: Path) -> None:
        if self.server is not None:
            self.server.start(stage.script, [f"hydra.run.dir={run_dir}", *args], environment(), run_dir.parent, log)
        else:
            with open(log, "a") as out:
                self.proc = subprocess.Popen(command(stage.script, run_dir, args), env=environment(), stdout=out,
                                             stderr=subprocess.STDOUT, cwd=run_dir.parent)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status; None if still running after `timeout` seconds."""
        if self.server is not None:
            return self.server.wait(timeout)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()
        else:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def timed_run(stage: Stage, inputs: dict[str, str], run_dir: Path, launcher: Launcher) -> float:
    """An uninterrupted run: its wall time sets the range of kill moments."""
    log = run_dir.parent / f"{run_dir.name}.log"
    start = time.perf_counter()
    launcher.start(stage, stage.args(inputs), run_dir, log)
    if launcher.wait() != 0:
        raise RuntimeError(f"{stage.name} failed without a fault:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def kill_trial(stage: Stage, inputs: dict[str, str], run_dir: Path, delay: float, launcher: Launcher,
               attempts: int = 3) -> dict:
    """SIGKILL the stage `delay` s after its start, then run it again (resuming) until it exits 0.

    A run that ends before its kill (a machine faster than the reference run) is started again
    from nothing with a kill 40% earlier, so every trial is a kill in mid-run.
    """
    args = stage.args(inputs)
    log = run_dir.parent / f"{run_dir.name}.log"
    for _ in range(4):
        launcher.start(stage, args, run_dir, log)
        killed = launcher.wait(delay) is None
        if killed:
            launcher.kill()
            break
        shutil.rmtree(run_dir, ignore_errors=True)
        delay *= 0.6
    returncode = None
    for _ in range(attempts):
        launcher.start(stage, [*args, *stage.rerun], run_dir, log)
        returncode = launcher.wait()
        if returncode == 0:
            break
    check = stage.check(run_dir) if returncode == 0 else {"complete": False, "frames_lost": 0, "frames_duplicated": 0}
    integrity = scan(run_dir)
    return {"stage": stage.name, "delay": round(delay, 2), "killed": killed,
            "recovered": returncode == 0 and check["complete"], "frames_lost": check["frames_lost"],
            "frames_duplicated": check["frames_duplicated"],
            "truncated": len(integrity["broken"]) + len(integrity["partial"]),
            "problems": integrity["broken"] + integrity["partial"]}


def kill_trials(inputs: dict[str, str], workdir: Path, trials: int, seed: int = 0, stages: list[Stage] = STAGES,
                moments: tuple[float, float] = (0.10, 0.95), server: Server | None = None) -> list[dict]:
    """`trials` kills per stage at moments drawn uniformly from `moments` (fractions) of the wall
    time of an uninterrupted run: start-up, training or synthesis, and writing the outputs.
    With a preloaded `server`, start-up no longer includes importing torch and Lightning."""
    rng = random.Random(seed)
    launcher = Launcher(server)
    rows = []
    for stage in stages:
        slug = stage.name.replace("+", "_")
        reference = timed_run(stage, inputs, workdir / f"{slug}_reference", launcher)
        for trial in range(trials):
            delay = rng.uniform(*moments) * reference
            rows.append({**kill_trial(stage, inputs, workdir / f"{slug}_{trial}", delay, launcher),
                         "reference_s": reference})
    return rows
