"""Feature evolution: the callback during training, resume, outputs, index.html, visualize mode=evolution."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch

import featvis.jobs.train
from featvis.evolution.callback import FeatureEvolution, log_spaced_steps, scheduled_steps
from featvis.checkpoints import load_classifier, read_checkpoint
from featvis.errors import ConfigError
from featvis.jobs.train import train
from featvis.jobs.visualize import visualize

from .conftest import SMALL_CLASSIFIER, compose_in

# A fresh 32 px target: 2 epochs of 6 steps; checkpoints every epoch and every 2 steps.
TARGET = [*SMALL_CLASSIFIER, "seed=3", "data.train_size=300", "data.val_size=50", "trainer.max_epochs=2",
          "logger=csv", "callbacks=evolution", "callbacks.model_checkpoint.save_top_k=-1"]
UNITS = "callbacks.feature_evolution.units=[conv1:0,conv5:1,fc8:0,fc8:4]"
EVOLUTION = [UNITS, "callbacks.feature_evolution.steps=4", "callbacks.feature_evolution.log_frames=4",
             "callbacks.feature_evolution.linear_frames=2"]
TOTAL_STEPS = 12


def evolution_cfg(out, priors, *extra):
    generator = priors["generator"][1]["last_checkpoint"]
    return compose_in(out, *TARGET, *EVOLUTION, f"callbacks.feature_evolution.generator.ckpt={generator}", *extra)


@pytest.fixture(scope="module")
def evolution_run(small_priors, small_judge, tmp_path_factory):
    """One target training with the callback: frames at step 0, log-spaced steps and each checkpoint,
    for a budget of 12 steps validated (and checkpointed) every 4, across the epochs of 6 steps."""
    out = tmp_path_factory.mktemp("evolution")
    judge = small_judge[1]["best_checkpoint"]
    cfg = evolution_cfg(out, small_priors, f"callbacks.feature_evolution.judge.ckpt={judge}",
                        "callbacks.feature_evolution.on_checkpoint=true", "trainer.max_epochs=null",
                        f"+task.train_steps={TOTAL_STEPS}", "+task.val_every_steps=4")
    return out, train(cfg)


def check_folder_agrees(root: Path) -> dict:
    """evolution.json names every frame once, every named file exists, nothing else is left."""
    doc = json.loads((root / "evolution.json").read_text())
    keys = [(f["step"], f["unit"], f["seed"]) for f in doc["frames"]]
    assert len(keys) == len(set(keys)), "a frame is recorded twice"
    assert sorted({f["step"] for f in doc["frames"]}) == doc["steps"]
    assert len(keys) == len(doc["steps"]) * len(doc["units"]) * doc["seeds"], "a frame is incomplete"
    named = {f["file"] for f in doc["frames"]} | {f["top_file"] for f in doc["frames"] if "top_file" in f}
    on_disk = {str(p.relative_to(root)) for p in (root / "frames").rglob("*.png")}
    assert named == on_disk
    grids = sorted(p.name for p in (root / "grids").glob("*.png"))
    assert grids == [f"step{s:07d}.png" for s in doc["steps"]]
    assert not list(root.rglob(".*partial*")), "a temporary file is left behind"
    return doc


def test_log_spaced_steps_are_dense_early():
    steps = sorted(log_spaced_steps(1000, 10))
    assert steps[0] == 1 and steps[-1] == 1000 and len(steps) == 10
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1] / 50
    assert log_spaced_steps(0, 10) == set()
    # evenly spaced frames for late training, and every n steps, on top
    assert scheduled_steps(468, 5, 3) == {1, 5, 22, 101, 156, 312, 468}
    assert scheduled_steps(12, 0, 0, 5) == {5, 10} and scheduled_steps(0, 5, 3) == set()


def test_callback_records_every_scheduled_frame_with_reports(evolution_run):
    out, result = evolution_run
    root = out / "evolution"
    doc = check_folder_agrees(root)
    # step 0, the log-spaced steps and the three validations' checkpoints (the last is also log-spaced)
    assert doc["steps"] == sorted({0, 4, 8, 12} | scheduled_steps(TOTAL_STEPS, 4, 2))
    assert [u["label"] for u in doc["units"]] == ["conv1.bn 0", "conv5.bn 1", "fc8 0 red circle", "fc8 4 green square"]
    for frame in doc["frames"]:
        assert ("judge_correct" in frame) == (frame["layer"] == "fc8")
        assert 0 <= frame["probability"] <= 1
        assert isinstance(frame["blank"], bool)
    later = [f["blank"] for f in doc["frames"] if f["step"] > 0]
    assert doc["blank_tile_fraction"] == sum(later) / len(later)
    for name in ("strip.png", "settling.svg", "index.html"):
        assert (root / name).stat().st_size > 0
    assert sorted(p.name for p in (root / "videos").glob("*.gif")) == sorted(f"{u['slug']}.gif" for u in doc["units"])
    # conv units are read before their ReLU: every tile moves from its start
    assert [u["layer"] for u in doc["units"]] == ["conv1.bn", "conv5.bn", "fc8", "fc8"]
    assert doc["blank_tile_fraction"] == 0
    assert set(doc["layers"]) == {"conv1.bn", "conv5.bn", "fc8"} and doc["settle_space"] == "judge fc7"
    for values in doc["layers"].values():
        assert values["steps"] == doc["steps"] and len(values["distance"]) == len(doc["steps"])
        assert values["distance"][-1] == 0 and max(values["distance"]) > 0
        low, high = values["settle_interval"]
        assert doc["steps"][0] <= low <= high <= doc["steps"][-1] and values["settle_step"] in doc["steps"]
    assert 0 <= doc["lower_layers_settle_first_confidence"] <= 1
    assert doc["callback_seconds"] > 0  # what the callback cost the run
    # the top-k real images of each unit at each step: indices into the pool, and their picture
    assert doc["top_k"] == 4
    for frame in doc["frames"]:
        assert len(frame["top"]) == 4 and len(set(frame["top"])) == 4 and (root / frame["top_file"]).is_file()
    # the state in the last checkpoint is what is on disk; every checkpoint (the best and last.ckpt of
    # each validation) holds the frames up to its step, its own included: taken before ModelCheckpoint saves
    state = read_checkpoint(result["last_checkpoint"])["callbacks"]["FeatureEvolution"]
    assert state["frames"] == doc["frames"]
    saved = [read_checkpoint(p) for p in (out / "checkpoints").glob("*.ckpt")]
    assert sorted({c["global_step"] for c in saved}) == [4, 8, 12]
    for checkpoint in saved:
        frames = checkpoint["callbacks"]["FeatureEvolution"]["frames"]
        assert frames == [f for f in doc["frames"] if f["step"] <= checkpoint["global_step"]]
        assert frames[-1]["step"] == checkpoint["global_step"]
    assert state["z0"].shape[0] == len(doc["units"]) * doc["seeds"]
    # CSV logger received the per-unit scalars at the frame steps
    metrics = (out / "csv" / "version_0" / "metrics.csv").read_text()
    assert "evolution-fc8/fc8-0_red_circle/judge_transfer" in metrics
    assert "evolution-conv5.bn/conv5.bn-1/activation" in metrics
    assert "evolution/blank_tile_fraction" in metrics
    assert "evolution-conv1.bn/settle_step" in metrics and "evolution/lower_layers_settle_first_confidence" in metrics
    # conv1 read before its ReLU is affine in the image: each frame says how well it shows its filter
    for frame in doc["frames"]:
        if frame["layer"] == "conv1.bn":
            assert -1 <= frame["filter_match"] <= 1 and frame["filter_match_other"] is None  # its layer's only unit
        else:
            assert "filter_match" not in frame
    last = [f["filter_match"] for f in doc["frames"] if f["layer"] == "conv1.bn" and f["step"] == doc["steps"][-1]]
    assert doc["layers"]["conv1.bn"]["filter_match"] == pytest.approx(sum(last) / len(last), abs=1e-4)
    assert "filter_match" not in doc["layers"]["fc8"] and "evolution-conv1.bn/filter_match" in metrics


def test_a_tile_is_blank_when_it_shows_its_start_image_or_one_colour():
    from featvis.synthesis.synthesize import blank_tiles

    start = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    moved = start.clone()
    moved[1] += 0.5 / 255  # a nudge below the tolerance: still the start image
    moved[2] = 0.3  # one flat colour
    moved[3] = 1 - moved[3]  # a new picture
    assert blank_tiles(start, start).tolist() == [True] * 4
    assert blank_tiles(moved, start).tolist() == [True, True, True, False]


def test_callback_does_not_disturb_training(small_priors, tmp_path):
    """Same seed with and without the callback: bit-identical weights (mode, grads, RNG untouched)."""
    weights = []
    for name, extra in (("with", []), ("without", ["~callbacks.feature_evolution"])):
        cfg = evolution_cfg(tmp_path / name, small_priors, "trainer.max_epochs=1", *extra)
        result = train(cfg)
        weights.append(read_checkpoint(result["last_checkpoint"])["state_dict"])
    assert (tmp_path / "with" / "evolution" / "evolution.json").exists()
    assert not (tmp_path / "without" / "evolution").exists()
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


class CrashAt(L.Callback):
    """Stands in for a kill: raises after the step's frame, before its checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def test_resume_loses_and_repeats_no_frame(small_priors, tmp_path, monkeypatch):
    every_2 = ["+callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.model_checkpoint.monitor=null"]
    cfg = evolution_cfg(tmp_path, small_priors, *every_2, "callbacks.feature_evolution.live_report=true")
    build = featvis.jobs.train.build_trainer

    def crashing_trainer(cfg):
        trainer = build(cfg)
        trainer.callbacks.insert(-1, CrashAt(5))  # after the frame at step 5, before the checkpoints
        return trainer

    monkeypatch.setattr(featvis.jobs.train, "build_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="killed at step 5"):
        train(cfg)
    before = json.loads((tmp_path / "evolution" / "evolution.json").read_text())
    assert 5 in before["steps"]  # written after the last checkpoint (step 4): must not count twice
    assert (tmp_path / "evolution" / "index.html").is_file()  # live_report: the page follows the frames
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    monkeypatch.setattr(featvis.jobs.train, "build_trainer", build)
    train(evolution_cfg(tmp_path, small_priors, *every_2, f"ckpt_path={tmp_path}/checkpoints/last.ckpt"))
    doc = check_folder_agrees(tmp_path / "evolution")
    assert set(doc["steps"]) >= {0, 5} | scheduled_steps(TOTAL_STEPS, 4, 2)


def test_visualize_evolution_from_saved_checkpoints(evolution_run, small_priors, tmp_path):
    out, _ = evolution_run
    generator = small_priors["generator"][1]["last_checkpoint"]
    from hydra import compose, initialize_config_dir

    from .conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("visualize", overrides=[
            "mode=evolution", f"target.ckpt_dir={out / 'checkpoints'}", f"generator.ckpt={generator}",
            "units=[conv5:1,fc8:0]", "seeds=2", "steps=4", f"output_dir={tmp_path}"])
    summary = visualize(cfg)
    doc = check_folder_agrees(tmp_path / "evolution")
    steps = sorted({read_checkpoint(p)["global_step"] for p in (out / "checkpoints").glob("*.ckpt")})
    assert doc["steps"] == steps == summary["steps"] == [4, 8, 12]
    assert [u["label"] for u in doc["units"]] == ["conv5 1", "fc8 0 red circle"]
    assert Path(summary["index"]).is_file()


def test_visualize_evolution_errors(tmp_path):
    from hydra import compose, initialize_config_dir

    from .conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("visualize", overrides=["mode=evolution", f"target.ckpt_dir={tmp_path / 'none'}",
                                              f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match="is not a folder"):
        visualize(cfg)
    (tmp_path / "empty").mkdir()
    cfg.target.ckpt_dir = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match="holds no .ckpt files"):
        visualize(cfg)
    assert not (tmp_path / "out").exists()


def test_bad_cadence_is_a_clear_error():
    with pytest.raises(ConfigError, match="every_n_steps=-2; expected a non-negative integer"):
        FeatureEvolution({"fc8": [0]}, {"name": "dgn_am", **_method()}, every_n_steps=-2)


def _method():
    from hydra import compose, initialize_config_dir

    from .conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return dict(compose("visualize").method)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_index_html_renders_in_headless_chromium(evolution_run, tmp_path):
    from PIL import Image

    index = evolution_run[0] / "evolution" / "index.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'id="step-label">step 12<' in dom  # the slider's script ran and shows the last step
    doc = json.loads(index.with_name("evolution.json").read_text())
    # per layer, every unit at every step above its top-k real images
    assert all(f"<h3>{layer}</h3>" in dom for layer in doc["layers"])
    assert dom.count('alt="top real images"') == len(doc["steps"]) * len(doc["units"])
    assert 'id="verdict"' in dom and "resamples" in dom
    shot = tmp_path / "index.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1000,900", index.as_uri()],
                   capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 900)
    # the strip's pictures are on screen: many colours, not a blank or error page
    colours = image.resize((250, 225)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 200  # text alone gives a few dozen


def test_pipeline_runs_every_stage_then_reuses_them(tmp_path, capsys):
    """task=pipeline (train.py's default): encoder -> G -> DAE -> target with the callback."""
    from omegaconf import open_dict

    from .conftest import SMALL_PRIOR

    small = [o for o in SMALL_CLASSIFIER + SMALL_PRIOR if not o.startswith(("logger=", "trainer.max_epochs"))]
    small += ["data.train_size=300", "data.val_size=50", "trainer.max_epochs=1",
              "callbacks.feature_evolution.steps=3", "callbacks.feature_evolution.log_frames=2",
              "callbacks.feature_evolution.units=[conv5:0,fc8:0]"]
    stages = tmp_path / "stages"

    def run(out, *overrides):
        cfg = compose_in(out, "task=pipeline", f"task.stages_dir={stages}", "logger=csv", *overrides)
        with open_dict(cfg):
            cfg.task.overrides = small
        return train(cfg)

    def done(name):  # the one complete stage folder <name>-<hash>
        (folder,) = [d for d in stages.iterdir() if re.fullmatch(rf"{name}-[0-9a-f]{{8}}", d.name)]
        return json.loads((folder / "done.json").read_text())

    first = run(tmp_path / "run1")
    for stage in ("encoder", "generator", "prior"):
        assert done(stage)["checkpoint"] == first[stage]
    assert read_checkpoint(first["generator"])["featvis"]["encoder"]["checkpoint"] == first["encoder"]
    doc = check_folder_agrees(tmp_path / "run1" / "evolution")
    assert [u["label"] for u in doc["units"]] == ["conv5.bn 0", "fc8 0 red circle"]
    assert f"feature evolution: {tmp_path / 'run1' / 'evolution' / 'index.html'}" in capsys.readouterr().out
    stamps = {s: Path(first[s]).stat().st_mtime_ns for s in ("encoder", "generator", "prior")}
    second = run(tmp_path / "run2")  # the stages are reused, only the target trains again
    assert {s: Path(second[s]).stat().st_mtime_ns for s in stamps} == stamps
    assert (tmp_path / "run2" / "evolution" / "index.html").is_file()
    # Stages given as checkpoints (task.<stage>.ckpt) are not trained, nor looked for in stages_dir.
    stages = tmp_path / "empty"
    given = run(tmp_path / "given", *(f"task.{s}.ckpt={first[s]}" for s in stamps))
    assert {s: given[s] for s in stamps} == {s: first[s] for s in stamps} and not stages.exists()
    assert (tmp_path / "given" / "evolution" / "index.html").is_file()
    stages = tmp_path / "stages"

    # A comparator classifier: its own stage, and a G of its own beside the first (not a stale reuse).
    for seeds, taken in (("[0]", "the encoder's seed"), ("[1]", "task.target_seed"), ("[3,3]", "given twice")):
        with pytest.raises(ConfigError, match=rf"task.comparator_seeds=\[.*is {taken}; expected other seeds"):
            run(tmp_path / "bad", f"task.comparator_seeds={seeds}")
    assert len(list(stages.iterdir())) == 3  # nothing trained
    third = run(tmp_path / "run3", "task.comparator_seeds=[2]")
    comparator = done("comparator-2")["checkpoint"]
    assert third["generator"] == done("generator-c2")["checkpoint"]
    assert done("generator")["checkpoint"] == first["generator"]  # the G without comparators stays
    assert Path(third["encoder"]).stat().st_mtime_ns == stamps["encoder"]
    state = read_checkpoint(third["generator"])["state_dict"]
    reference, _ = load_classifier(comparator)
    assert torch.equal(state["comparator.others.0.conv1.conv.weight"], reference.state_dict()["conv1.conv.weight"])
    assert not torch.equal(reference.state_dict()["conv1.conv.weight"],
                           load_classifier(third["encoder"])[0].state_dict()["conv1.conv.weight"])



def test_two_runs_asking_for_one_stage_take_turns_and_a_killed_runs_lock_blocks_nothing(tmp_path, caplog,
                                                                                         monkeypatch):
    """A stage being trained is locked: a second run waits for it, then reuses it; a lock held by a
    process that was killed is gone with it."""
    import logging
    import signal
    import sys
    import threading
    import time

    from featvis.jobs import pipeline, train as training

    encoder = tmp_path / "encoder.ckpt"
    encoder.write_bytes(b"weights")
    stages, overrides = tmp_path / "stages", ["task=generator", f"encoder.ckpt={encoder}"]
    trained, started = [], threading.Event()

    def slow_train(cfg):
        trained.append(cfg.output_dir)
        started.set()
        time.sleep(1.5)  # the second run asks while this one trains
        return {"best_checkpoint": str(encoder), "last_checkpoint": None, "metrics": {}}

    monkeypatch.setattr(training, "train", slow_train)
    found = []
    first = threading.Thread(target=lambda: found.append(pipeline.run_stage(stages, "generator", overrides, "[2/4]")))
    with caplog.at_level(logging.INFO, logger="featvis.jobs"):  # the pipeline and its locks
        first.start()
        assert started.wait(60)
        found.append(pipeline.run_stage(stages, "generator", overrides, "[2/4]"))
        first.join()
    assert found == [str(encoder), str(encoder)] and len(trained) == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[2/4] generator")]
    assert "another run is training this stage; waiting for it" in lines[1] and "reusing" in lines[2], lines

    # A run killed while it holds the lock of another stage: the next run trains that stage at once.
    lock = stages / next(stages.glob('generator-*')).name.replace('generator', 'prior') / ".lock"
    lock.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, sys, time; filelock.FileLock(sys.argv[1])"
                               ".acquire(); print('held', flush=True); time.sleep(600)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    started.clear()
    done = threading.Thread(target=lambda: found.append(pipeline.run_stage(stages, "prior", overrides, "[3/4]")))
    done.start()
    done.join(30)
    assert not done.is_alive() and len(trained) == 2  # trained, not waiting on a dead run's lock


def test_a_stage_is_reused_only_for_the_same_config_and_inputs(tmp_path, caplog, monkeypatch):
    """Stage folders are keyed by what the stage trains; a change of config or of an input
    checkpoint is another stage, and the log says what changed."""
    import logging

    from featvis.jobs.pipeline import stage_changes, stage_record

    encoder = tmp_path / "encoder.ckpt"
    encoder.write_bytes(b"weights")
    base = ["task=generator", f"encoder.ckpt={encoder}"]
    record = stage_record(base)
    assert record["inputs"] == {str(encoder): [7, encoder.stat().st_mtime_ns]}
    assert stage_record([*base, "logger=csv", "trainer.accelerator=cpu", "output_dir=/elsewhere"]) == record
    wider = stage_record([*base, "model.fc6_dim=256"])
    assert stage_changes(record, wider) == "model.fc6_dim: 1024 -> 256"
    other_data = stage_record([*base, "data=imagefolder", "data.root=/data/two-classes"])
    assert "data._target_: featvis.data.ShapesDataModule -> featvis.data.ImageFolderDataModule" in \
        stage_changes(record, other_data)
    encoder.write_bytes(b"retrained")  # the same path, other weights
    assert stage_changes(record, stage_record(base)).startswith(f"inputs.{encoder}: [7, ")

    # The pipeline's folders follow: a finished stage of this config is reused, another config trains
    # in a folder of its own and says why (here without training: the stage is faked complete).
    from featvis.jobs import pipeline, train as training

    stages = tmp_path / "stages"
    trained = []
    fake = {"best_checkpoint": str(encoder), "last_checkpoint": None, "metrics": {}}
    monkeypatch.setattr(training, "train", lambda cfg: trained.append(cfg.model.fc6_dim) or fake)
    with caplog.at_level(logging.INFO, logger="featvis.jobs.pipeline"):
        for overrides in (base, base, [*base, "model.fc6_dim=256"]):
            assert pipeline.run_stage(stages, "generator", overrides, "[2/4]") == str(encoder)
    assert trained == [1024, 256] and len(list(stages.glob("generator-*"))) == 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[2/4] generator: ")]
    assert "(no earlier stage)" in lines[0] and "reusing" in lines[1]
    assert lines[2].endswith("was trained with model.fc6_dim: 1024 -> 256)"), lines[2]


def test_pre_relu_units_get_a_gradient_where_the_rectified_unit_is_zero():
    from featvis.nets import AlexNet
    from featvis.nets.layers import pre_activation, tap
    from featvis.synthesis.methods import units_of
    from featvis.synthesis.objectives import ObjectiveBatch

    net = AlexNet(num_classes=15, image_size=32, fc6_dim=64, fc7_dim=64).eval()
    plain = AlexNet(num_classes=15, image_size=32, fc6_dim=64, fc7_dim=64, batch_norm=False).eval()
    assert [pre_activation(net, n) for n in ("conv3", "fc6", "fc8", "conv3.bn")] == ["conv3.bn", "fc6.linear",
                                                                                      "fc8", "conv3.bn"]
    assert pre_activation(plain, "conv3") == "conv3.conv"
    with torch.no_grad():
        net.conv3.bn.bias[0] = -100.0  # channel 0 of conv3 is 0 everywhere after its ReLU
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    for pre_relu, moves in ((False, False), (True, True)):
        units, sizes = units_of(net, ["conv3:0", "fc8:1"], None, [], "mean", pre_relu=pre_relu)
        assert [u.label for u in units] == (["conv3.bn 0", "fc8 1"] if pre_relu else ["conv3 0", "fc8 1"])
        objectives = ObjectiveBatch([units[0].terms], sizes, spatial="mean")
        taps = tap(net, [units[0].layer])
        gradient, = torch.autograd.grad(objectives(taps(image)).sum(), image)
        assert bool(gradient.abs().sum() > 0) == moves


def synthetic_doc(tmp_path, settles: dict[str, int], steps=(0, 1, 2, 4, 8, 16)) -> dict:
    """Frames on disk whose units (2 per layer, 2 seeds) change until their layer's settle step and
    stay their final picture from there on."""
    from featvis.io import save_png

    generator = torch.Generator().manual_seed(0)
    units, frames = [], []
    for layer, settle in settles.items():
        for k in range(2):
            label = f"{layer} {k}"
            units.append({"label": label, "layer": layer, "slug": f"{layer}-{k}", "terms": []})
            for seed in range(2):
                final = torch.rand(3, 8, 8, generator=generator)
                for step in steps:
                    image = final if step >= settle else torch.rand(3, 8, 8, generator=generator)
                    file = f"frames/{step}/{layer}-{k}_seed{seed}.png"
                    save_png(image, tmp_path / file)
                    frames.append({"step": step, "unit": label, "seed": seed, "layer": layer, "file": file})
    return {"steps": list(steps), "units": units, "frames": frames, "seeds": 2}


@pytest.mark.parametrize("settles, first", [({"conv1": 2, "conv5": 8}, True), ({"conv1": 8, "conv5": 2}, False),
                                            ({"conv1": 16, "conv5": 2}, False),  # conv1 never settles
                                            ({"conv1": 16, "conv5": 16}, None)])  # neither does: cannot tell
def test_settle_steps_their_intervals_and_the_order_verdict(tmp_path, settles, first):
    from featvis.evolution.report import frames_by_unit, settling

    doc = synthetic_doc(tmp_path, settles)
    found = settling(doc, frames_by_unit(doc, tmp_path))
    for layer, settle in settles.items():
        assert found["layers"][layer]["settle_step"] == settle
        assert found["layers"][layer]["settle_interval"] == [settle, settle]  # every curve settles there
        assert found["layers"][layer]["curves"] == 4
    assert found["lower_layers_settle_first"] is first  # step 16 is the last frame: not settled
    assert found["lower_layers_settle_first_confidence"] == (1.0 if first else 0.0)
    # in a feature space too (uncentred pixels as features): the same steps
    embedded = settling(doc, frames_by_unit(doc, tmp_path), embed=lambda x: x.flatten(1))["layers"]
    assert {k: v["settle_step"] for k, v in embedded.items()} == settles


def test_top_real_images_are_the_pools_most_activating():
    from featvis.nets import AlexNet, activations
    from featvis.evolution.recorder import EvolutionRecorder
    from featvis.synthesis.methods import units_of
    from featvis.synthesis.real import RealImages
    from featvis.synthesis.settings import SynthesisSpec

    net = AlexNet(num_classes=15, image_size=32, fc6_dim=64, fc7_dim=64).eval()
    batches = [(torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(i)), None) for i in range(3)]
    spec = SynthesisSpec(units=["conv3:2", "fc8:5"], spatial="mean", pre_relu=True, top_k=3)
    recorder = EvolutionRecorder(spec, {}, real_images=25)
    recorder.real = RealImages(batches, 32, 25, uint8=True, batch_size=64)
    assert recorder.real.images.dtype == torch.uint8 and len(recorder.real) == 25
    units, _ = units_of(net, recorder.spec.units, None, [], "mean", pre_relu=True)
    pool = recorder.real.images.float() / 255
    acts = activations(net, pool, ["conv3.bn", "fc8"])
    expected = [acts["conv3.bn"].mean((2, 3))[:, 2].topk(3).indices.tolist(),
                acts["fc8"][:, 5].topk(3).indices.tolist()]
    assert recorder.top_real(net, units) == expected
    with pytest.raises(ConfigError, match="top_k=-1; expected a non-negative integer"):
        SynthesisSpec(units=["fc8:0"], top_k=-1)


def test_frames_that_never_change_have_no_settle_step(tmp_path):
    """Identical frames (e.g. a network that did not train between them): no settle step, no verdict."""
    from featvis.evolution.report import frames_by_unit, settling

    doc = synthetic_doc(tmp_path, {"conv1": 0, "conv5": 0})
    found = settling(doc, frames_by_unit(doc, tmp_path), embed=lambda x: x.flatten(1) + 1)
    assert [v["settle_step"] for v in found["layers"].values()] == [None, None]
    assert found["lower_layers_settle_first"] is None and found["lower_layers_settle_first_confidence"] == 0


def test_receptive_reading_is_a_small_window_early_and_the_whole_map_late():
    """spatial=receptive (the callback's default) reads a first conv layer over a few positions
    about its centre, a deep one over its whole map: found from the network, on a featvis AlexNet
    and on a plain nn.Sequential of the user's."""
    from featvis import as_target
    from featvis.nets import AlexNet
    from featvis.nets.layers import tap
    from featvis.synthesis.methods import layer_shapes, receptive_places, units_of
    from featvis.synthesis.objectives import ObjectiveBatch, reduce_units

    assert inspect_default(FeatureEvolution, "spatial") == "receptive"
    net = AlexNet(num_classes=5, image_size=32, channels=(8, 8, 8, 8, 8), fc6_dim=16, fc7_dim=16).eval()
    units, _ = units_of(net, ["conv1:0", "conv2:1", "conv5:0", "fc8:1", "conv1:2@mean"], None, [], "receptive",
                        pre_relu=True)
    # conv1 (5 px kernel, stride 2): 16x16 map, its centre unit sees 5 px, so the positions 2 px apart
    # inside those are 3x3; conv2 sees 25 px of a 7x7 map (4.6 px apart): 5x5; conv5 sees the image.
    assert {u.label: u.terms[0].at for u in units} == {"conv1.bn 0": "3x3", "conv1.bn 2@mean": "mean",
                                                       "conv2.bn 1": "5x5", "conv5.bn 0": "mean", "fc8 1": None}
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = tap(net, ["conv1.bn"])(image)["conv1.bn"]
    objectives = ObjectiveBatch([units[0].terms], layer_shapes(net, ["conv1.bn"]), spatial="receptive")
    assert torch.allclose(objectives(tap(net, ["conv1.bn"])(image[:1])), maps[:1, 0, 7:10, 7:10].mean())
    assert torch.allclose(reduce_units(maps, "1x1"), reduce_units(maps, "center"))

    own = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              *[m for _ in range(3) for m in (torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
                                                              torch.nn.ReLU())],
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    target = as_target(own, image_size=16, mean=[0.5] * 3, std=[0.5] * 3)
    # layer 0 sees 3 px of a 16x16 map (1 px apart): 3x3; layer 2 5 px of 8x8 (2 px apart): 3x3;
    # layer 4 9 px of 4x4 (4 px apart): 3x3; layer 6 (2x2) sees 17 px, the whole image; 11 is a vector.
    assert receptive_places(target, ["0", "2", "4", "6", "11"]) == {"0": "3x3", "2": "3x3", "4": "3x3",
                                                                    "6": "mean", "11": None}


def inspect_default(callable_, name):
    import inspect

    return inspect.signature(callable_).parameters[name].default


def test_receptive_place_and_windows_on_maps_and_tokens():
    from featvis.synthesis.objectives import receptive_place, reduce_units

    assert receptive_place((30, 34), (30, 34), (32, 32), 64) == "3x3"  # 5 px, positions 2 px apart
    assert receptive_place((31, 32), (31, 32), (32, 32), 64) == "1x1"  # the centre unit alone
    assert receptive_place((0, 63), (20, 44), (7, 7), 64) == "7x3"     # all rows; 25 columns, 9.1 px apart
    assert receptive_place((0, 62), (0, 62), (7, 7), 64) == "mean"     # cut by one border: measured on the other
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # a class token + 4x4 patches
    grid = tokens[:, 1:].reshape(2, 4, 4, 3)
    assert torch.equal(reduce_units(tokens, "2x2", prefix_tokens=1), grid[:, 1:3, 1:3].mean((1, 2)))
    with pytest.raises(ConfigError, match=r"window 9x9 on a 4x4 map; expected 1x1 to 4x4"):
        reduce_units(grid.permute(0, 3, 1, 2), "9x9")


def test_a_first_layer_units_filter_is_read_from_the_network_and_matched_against_its_synthesis():
    """conv1 before its ReLU is affine in the image: its centre unit's filter, read as a gradient,
    is the conv weight with batch norm and the input normalization folded in (a featvis AlexNet, a
    torchvision ResNet); a rectified, pooled or deeper layer has none.  An image that holds a unit's
    filter at the centre matches it perfectly and its neighbours' less; a flat one matches none."""
    import torchvision

    from featvis import as_target
    from featvis.nets import AlexNet
    from featvis.synthesis.filters import correlation, filter_matches, linear_filters
    from featvis.synthesis.methods import units_of

    net = AlexNet(num_classes=5, image_size=32, channels=(8, 8, 8, 8, 8), fc6_dim=16, fc7_dim=16).eval()
    with torch.no_grad():
        net.conv1.bn.running_var.uniform_(0.5, 2.0)
        net.conv1.bn.weight.uniform_(0.5, 2.0)
    filters = linear_filters(net, "conv1.bn", [2, 0])
    scale = net.conv1.bn.weight / (net.conv1.bn.running_var + net.conv1.bn.eps).sqrt()
    assert filters.weights.shape == (2, 3, 5, 5) and (filters.rows, filters.cols) == (slice(14, 19), slice(14, 19))
    assert torch.allclose(filters.of(0), net.conv1.conv.weight[0] * scale[0] / net.input_std[0], atol=1e-6)
    assert linear_filters(net, "conv1.conv", [0]) is not None
    for layer in ("conv1", "pool1", "conv2.bn", "fc8"):  # after the ReLU, a max pool, a second conv; a vector
        assert linear_filters(net, layer, [0]) is None, layer

    resnet = torchvision.models.resnet18(weights=None).eval()
    target = as_target(resnet, image_size=64, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    folded = resnet.bn1.weight[3] / (resnet.bn1.running_var[3] + resnet.bn1.eps).sqrt()
    expected = resnet.conv1.weight[3] * folded / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(linear_filters(target, "bn1", [3]).of(3), expected, atol=1e-5)
    assert linear_filters(target, "relu", [3]) is None

    units, _ = units_of(net, ["conv1:0", "conv1:2", "conv2:1", "fc8:1"], None, [], "receptive", pre_relu=True)
    images = torch.full((8, 3, 32, 32), 0.5)
    images[0][:, 14:19, 14:19] += 0.4 * filters.of(0) / filters.of(0).abs().max()  # unit conv1 0, seed 0
    found = filter_matches(net, units, images, seeds=2)
    assert found[0]["filter_match"] == pytest.approx(1.0, abs=1e-4)
    assert found[0]["filter_match_other"] == pytest.approx(correlation(filters.of(0), filters.of(2)), abs=1e-4)
    assert found[1] == {"filter_match": 0.0, "filter_match_other": 0.0}  # flat: no pattern
    assert found[4:] == [None] * 4  # conv2 and fc8 are not affine in the image


def test_a_bad_spatial_value_is_a_one_line_error():
    from featvis.synthesis.objectives import ObjectiveBatch, Term

    with pytest.raises(ConfigError) as caught:
        FeatureEvolution({"fc8": [0]}, {"name": "dgn_am", **_method()}, spatial="centre")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("callbacks.feature_evolution.spatial='centre'; expected one of "
                                                      "['center', 'mean', 'cls', 'receptive']")
    # receptive depends on the layer: a term nobody resolved against the network is refused, in one line
    with pytest.raises(ConfigError, match="spatial=receptive depends on the layer and is resolved when units are parsed"):
        ObjectiveBatch([[Term("conv1", 0)]], {"conv1": (4, 8, 8)}, spatial="receptive")


def test_differences_between_units_and_over_training_on_constructed_frames(tmp_path):
    """Grey RMS: two identical units are 0 apart, a known difference gives its RMS; a unit's change
    is its first frame's distance to its last; both reach evolution.json's figures and index.html."""
    from featvis.evolution.report import build_reports, differences, frames_by_unit, grey_rms
    from featvis.io import save_png

    flat = {v: torch.full((3, 8, 8), v / 255) for v in (51, 102, 153)}  # 0.2, 0.4, 0.6: exact in a PNG
    half = flat[51].clone()
    half[:, :4] = 153 / 255  # half the image 0.4 lighter: RMS sqrt(0.4^2 / 2)
    final = {"conv1 0": flat[102], "conv1 1": flat[102], "fc8 0": flat[51], "fc8 1": half}
    start = {"conv1 0": flat[102], "conv1 1": flat[51], "fc8 0": flat[153], "fc8 1": flat[51]}
    steps, units, frames = [0, 5, 10], [], []
    for label in final:
        layer = label.split()[0]
        units.append({"label": label, "layer": layer, "slug": label.replace(" ", "-"), "terms": []})
        for step in steps:
            image = start[label] if step == 0 else final[label]
            file = f"frames/{step}/{label.replace(' ', '-')}_seed0.png"
            save_png(image, tmp_path / file)
            frames.append({"step": step, "unit": label, "seed": 0, "layer": layer, "file": file, "activation": 1.0,
                           "probability": 0.5})
    doc = {"steps": steps, "units": units, "frames": frames, "seeds": 1, "method": "dgn_am"}
    found = differences(doc, frames_by_unit(doc, tmp_path))
    assert found["layers"]["conv1"] == {"unit_difference": 0.0, "change": pytest.approx(0.1, abs=1e-4)}
    assert found["layers"]["fc8"]["unit_difference"] == pytest.approx(0.4 / 2 ** 0.5, abs=1e-4)
    assert found["units"]["fc8 0"]["change"] == pytest.approx(0.4, abs=1e-4)
    assert found["units"]["fc8 1"] == {"layer": "fc8", "difference": pytest.approx(0.2828, abs=1e-4),
                                       "change": pytest.approx(0.2828, abs=1e-4)}
    assert grey_rms(flat[51], flat[51]) == 0.0
    summary = build_reports(tmp_path, doc)
    assert summary["layers"]["fc8"]["unit_difference"] == found["layers"]["fc8"]["unit_difference"]
    page = (tmp_path / "index.html").read_text()
    assert '<td class=unit-difference>0.283</td><td class=change>0.341</td>' in page  # fc8: (0.4 + 0.283) / 2
