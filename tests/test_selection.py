"""GeneratorSelection: G kept for what its syntheses show to held-out classifiers."""

import csv

import pytest
import torch
from featvis.checkpoints import load_classifier, read_checkpoint
from featvis.errors import ConfigError
from featvis.jobs.train import train
from featvis.nets.adapters import fit_images
from featvis.synthesis.methods import load_method, method_config
from featvis.synthesis.synthesize import load_judge, synthesize

from .conftest import SMALL_PRIOR, compose_in

# Two validations (steps 2 and 4) of a G on 128 shapes, every validation's checkpoint kept.
TWO_VALIDATIONS = [*(o for o in SMALL_PRIOR if not o.startswith(("data.train_size", "trainer.max_epochs"))),
                   "data.train_size=128", "task.train_steps=4", "task.val_every_steps=2",
                   "callbacks.model_checkpoint.save_top_k=-1", "task.callbacks.selection.steps=10"]
SELECTED = ["task.monitor=val/selection", "task.monitor_mode=max"]


def validations(out):
    rows = csv.DictReader(next(out.rglob("metrics.csv")).open())
    return [{k: float(v) for k, v in r.items() if v} for r in rows if r.get("val/selection")]


def test_generator_is_kept_by_what_the_selectors_name_in_its_syntheses(small_classifier, small_judge, tmp_path):
    encoder, selector = small_classifier[1]["best_checkpoint"], small_judge[1]["best_checkpoint"]
    out = tmp_path / "g"
    result = train(compose_in(out, "task=generator", f"encoder.ckpt={encoder}", *TWO_VALIDATIONS,
                              f"task.selectors=[{selector}]", *SELECTED, "task.callbacks.selection.max_grid_ratio=null",
                              "task.callbacks.selection.min_agreement=0.0",
                              # NHWC convolutions round otherwise than the NCHW ones of the check below
                              "performance.channels_last=false"))
    rows = validations(out)
    assert [int(r["step"]) + 1 for r in rows] == [2, 4]  # every validation scored
    # No gate: the transfer itself, and a tie-break below its resolution (30 images, one selector) for the later G.
    later = [r["val/selection"] - r["val/selection_transfer"] for r in rows]
    assert 0 < later[0] < later[1] <= 0.5 / 30 + 1e-6, later
    assert all(r["val/selection_seconds"] > 0 for r in rows) and rows[1]["val/selection_seconds"] > rows[0]["val/selection_seconds"]
    best = max(rows, key=lambda r: (r["val/selection"], -r["step"]))
    kept = read_checkpoint(result["best_checkpoint"])
    assert kept["global_step"] == int(best["step"]) + 1
    # The logged transfer is the selector's share on the kept G's DGN-AM, as anyone would compute it.
    net, record = load_classifier(encoder)
    method = load_method(method_config("dgn_am"), result["best_checkpoint"], None, net.image_size)
    classes = record["class_names"]
    images = synthesize(net, list(range(len(classes))), method, layer="fc8", class_names=classes, seeds=2,
                        steps=10, evaluation=False).images
    judge = load_judge(selector, target=net).net.eval()
    with torch.no_grad():
        named = judge(fit_images(images, judge.image_size)).argmax(1) == torch.arange(len(classes)).repeat_interleave(2)
    assert float(named.float().mean()) == pytest.approx(best["val/selection_transfer"], abs=1e-6)
    # The syntheses of each validation, one picture each: rows seeds, columns classes.
    assert sorted(p.name for p in (out / "selection").iterdir()) == ["step0000002.png", "step0000004.png"]


def test_a_failed_gate_ranks_a_generator_below_every_one_that_passes(small_classifier, small_judge, tmp_path):
    encoder, selector = small_classifier[1]["best_checkpoint"], small_judge[1]["best_checkpoint"]
    out = tmp_path / "g"
    train(compose_in(out, "task=generator", f"encoder.ckpt={encoder}", *TWO_VALIDATIONS,
                     f"task.selectors=[{selector}]", "task.callbacks.selection.max_grid_ratio=0.0"))
    rows = validations(out)
    assert rows and all(r["val/selection"] == pytest.approx(r["val/selection_transfer"] - 1, abs=0.5 / 30) for r in rows)
    assert all(r["val/selection_grid_ratio"] > 0 for r in rows)


def test_without_selectors_nothing_is_synthesized_and_bad_selections_are_one_line_errors(small_classifier,
                                                                                         small_judge, tmp_path):
    encoder, other = small_classifier[1]["best_checkpoint"], small_judge[1]["best_checkpoint"]
    out = tmp_path / "plain"
    train(compose_in(out, "task=generator", f"encoder.ckpt={encoder}", *TWO_VALIDATIONS))
    assert not validations(out) and not (out / "selection").exists()
    on = ["task=generator", f"encoder.ckpt={encoder}", *TWO_VALIDATIONS]
    for overrides, message in (
            (SELECTED, r"task.monitor=val/selection and task.selectors is empty; expected classifier"),
            ([f"task.selectors=[{other}]", f"task.comparators=[{other}]"], r"is also in task.comparators"),
            ([f"task.selectors=[{encoder}]"], r"is the encoder G is trained on; expected classifiers outside")):
        with pytest.raises(ConfigError, match=message):
            train(compose_in(tmp_path / "bad", *on, *overrides))


def test_the_pipeline_trains_selectors_as_stages_and_keeps_g_by_them(tmp_path, monkeypatch):
    from featvis.jobs import pipeline, train as training

    weights = tmp_path / "trained.ckpt"
    weights.write_bytes(b"weights")
    asked = []

    def record(cfg):
        asked.append(cfg)
        return {"best_checkpoint": str(weights), "last_checkpoint": None, "metrics": {}}

    monkeypatch.setattr(training, "train", record)
    cfg = compose_in(tmp_path / "run", "task=pipeline", f"task.stages_dir={tmp_path / 'stages'}", "logger=none",
                     "task.selector_seeds=[3,4]")
    pipeline.train_pipeline(cfg)
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "stages").iterdir())
    assert names == ["encoder", "generator-s3-s4", "prior", "selector-3", "selector-4"]
    selectors = [c for c in asked if c.task.name == "classifier" and c.seed in (3, 4)]
    assert len(selectors) == 2
    (generator,) = [c for c in asked if c.task.name == "generator"]
    assert list(generator.task.selectors) == [str(weights)] * 2
    assert (generator.task.monitor, generator.task.monitor_mode) == ("val/selection", "max")
    assert generator.callbacks.model_checkpoint.monitor == "val/selection"
    for seeds, taken in (("[0]", "the encoder's seed"), ("[1]", "task.target_seed"), ("[2]", "in task.comparator_seeds")):
        bad = compose_in(tmp_path / "bad", "task=pipeline", f"task.stages_dir={tmp_path / 'stages'}",
                         "task.comparator_seeds=[2]", f"task.selector_seeds={seeds}")
        with pytest.raises(ConfigError, match=rf"task.selector_seeds=\[.*is {taken}; expected other"):
            pipeline.train_pipeline(bad)
