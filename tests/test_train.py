from pathlib import Path

import pytest
import torch

from featvis.checkpoints import load_classifier, read_checkpoint
from featvis.data import ShapesDataset
from featvis.errors import CheckpointError
from featvis.nets import activations
from featvis.jobs.train import train

from .conftest import SMALL_CLASSIFIER, compose_in


def test_short_training_learns_and_writes_checkpoints(small_classifier):
    cfg, result = small_classifier
    # 15 classes: chance is 0.067; five short epochs on 1500 images reach well above it.
    assert result["metrics"]["val/acc"] > 0.3, result["metrics"]
    assert result["metrics"]["train/loss"] < 2.0
    assert result["last_checkpoint"].endswith("last.ckpt")
    assert (cfg.output_dir + "/checkpoints") in result["best_checkpoint"]
    csv = next(Path(cfg.output_dir, "csv").rglob("metrics.csv"))
    assert "val/acc" in csv.read_text().splitlines()[0]


def test_last_checkpoint_is_the_newest_epoch_whatever_the_best(tmp_path):
    # the best checkpoint is only considered every 2nd epoch: epoch 1 of 0-2 at most, so a
    # last.ckpt that only followed the kept checkpoints would stop at epoch 1
    small = [o for o in SMALL_CLASSIFIER if not o.startswith(("data.train_size", "trainer.max_epochs"))]
    result = train(compose_in(tmp_path, *small, "data.train_size=200", "trainer.max_epochs=3",
                              "+callbacks.model_checkpoint.every_n_epochs=2"))
    assert read_checkpoint(result["best_checkpoint"])["epoch"] == 1
    assert result["last_checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert read_checkpoint(result["last_checkpoint"])["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        Path(result["best_checkpoint"]).name, "last.ckpt"]


def test_checkpoint_describes_itself_and_loads_safely(small_classifier):
    cfg, result = small_classifier
    net, record = load_classifier(result["best_checkpoint"])
    assert record["kind"] == "classifier"
    assert record["net"]["fc6_dim"] == 128 and record["net"]["image_size"] == 32
    assert record["class_names"][0] == "red circle" and len(record["class_names"]) == 15
    # The loaded network reproduces the validation accuracy recorded for that checkpoint.
    val = ShapesDataset(300, 32, split="val")
    images = torch.stack([val[i][0] for i in range(300)])
    labels = torch.tensor([val[i][1] for i in range(300)])
    with torch.no_grad():
        accuracy = (net(images).argmax(1) == labels).float().mean().item()
    best_score = read_checkpoint(result["best_checkpoint"])["callbacks"]
    assert accuracy > 0.3
    assert any(abs(state.get("best_model_score", -1) - accuracy) < 1e-4
               for state in best_score.values() if isinstance(state, dict))
    assert activations(net, images[:2], ["fc6"])["fc6"].shape == (2, 128)


def test_wrong_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    missing = tmp_path / "nothing.ckpt"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(missing)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_classifier(corrupt)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "featvis": {"kind": "generator"}}, other)
    with pytest.raises(CheckpointError, match="is a generator checkpoint; expected a classifier"):
        load_classifier(other)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a featvis checkpoint"):
        load_classifier(plain)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"featvis": Exploit()}, evil)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_classifier(evil)
    assert not marker.exists()
