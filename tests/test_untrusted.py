"""Untrusted checkpoints are inert: every load is weights_only, and featvis writes plain types only."""

import ast
import json
from pathlib import Path

import torch

from featvis.checkpoints import read_checkpoint

from .conftest import ROOT

SOURCES = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")),
           ROOT / "train.py", ROOT / "visualize.py"]
PLAIN = (str, int, float, bool, type(None))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def _weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def test_every_torch_load_and_resume_is_weights_only():
    loads, fits = [], []
    for path in SOURCES:
        for call in _calls(path):
            name = ast.unparse(call.func)
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name == "torch.load":
                loads.append((where, _weights_only(call)))
            if name.endswith(".fit") and any(k.arg == "ckpt_path" for k in call.keywords):
                fits.append((where, _weights_only(call)))
    # the scan sees the loaders it guards
    assert any(w.startswith("src/featvis/io.py") for w, _ in loads) and fits
    assert [w for w, ok in loads if not ok] == []
    assert [w for w, ok in fits if not ok] == []


def _non_plain(value, where="checkpoint"):
    """Paths inside a checkpoint whose value is neither a tensor nor a plain type."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in
                ([f"{where} key {k!r}"] if not isinstance(k, PLAIN) else []) + _non_plain(v, f"{where}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_plain(v, f"{where}[{i}]")]
    return [] if isinstance(value, (*PLAIN, torch.Tensor)) else [f"{where}: {type(value).__name__}"]


def test_checkpoints_hold_tensors_and_plain_types_only(small_classifier, small_priors):
    paths = [small_classifier[1]["best_checkpoint"], small_priors["generator"][1]["last_checkpoint"],
             small_priors["prior"][1]["last_checkpoint"]]
    for path in paths:
        checkpoint = read_checkpoint(path)
        assert _non_plain(checkpoint) == [], path
        assert "hyper_parameters" not in checkpoint  # constructor arguments live in the plain record
        json.dumps(checkpoint["featvis"])  # the record: JSON types only, not even tensors
