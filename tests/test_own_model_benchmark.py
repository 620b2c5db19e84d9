"""benchmarks/own_model.py end to end at its smallest (--quick): the tables, then its figures as one JSON line."""

import json
import math
import os
import re
import subprocess
import sys

from .conftest import ROOT

FAMILIES = ("alexnet", "resnet18", "vit")
METHODS = ("pixel_fft", "dgn_am")


def test_own_model_benchmark_at_its_smallest(small_priors):
    generator = small_priors["generator"][1]["last_checkpoint"]
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "own_model.py"), "--quick",
                           "--threads", "1", "--generator", str(generator)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])

    keys = [f"sampler_vs_bare_{f}" for f in FAMILIES]
    for f in FAMILIES:
        for m in METHODS:
            keys += [f"sampler_vs_bare_{f}_{m}", f"sampler_ms_{f}_{m}", f"bare_ms_{f}_{m}", f"unit_steps_per_s_{f}_{m}"]
    keys += ["own_module_blank_tile_fraction", "own_module_blank_tile_fraction_vit", "torch_threads"]
    assert not [k for k in keys if k not in figures], figures
    assert figures["torch_threads"] == 1

    # the speed table came first, one row per family and method, agreeing with the JSON figures
    rows = {}
    for line in lines[:-1]:
        cells = line.split()
        if len(cells) == 11 and cells[0] in FAMILIES and cells[1] in METHODS:
            # sampler, window, steady, bare ms/step; whole-run, window, steady ratios; unit-steps/s
            values = [float(c) for c in cells[2:10]]
            rows[cells[0], cells[1]] = [values[0], values[3], values[4], values[7]]
            window, steady = values[1], values[2]
            assert math.isclose(values[5], window / values[3], rel_tol=0.02), line
            assert math.isclose(values[6], steady / values[3], rel_tol=0.02), line
            # the whole run's time lies between the two (printed to 0.1 ms)
            assert min(window, steady) - 0.05 <= values[0] <= max(window, steady) + 0.05, line
    assert set(rows) == {(f, m) for f in FAMILIES for m in METHODS}, proc.stdout[-3000:]
    for (f, m), (sampler_ms, bare_ms, ratio, unit_steps) in rows.items():
        key = f"{f}_{m}"
        for value in (sampler_ms, bare_ms, ratio, unit_steps):
            assert math.isfinite(value) and value > 0, (key, rows[f, m])
        assert math.isclose(figures[f"sampler_ms_{key}"], sampler_ms, rel_tol=1e-3, abs_tol=1e-3)
        assert math.isclose(figures[f"bare_ms_{key}"], bare_ms, rel_tol=1e-3, abs_tol=1e-3)
        # the ratio is the printed times' ratio, within rounding
        assert math.isclose(figures[f"sampler_vs_bare_{key}"], sampler_ms / bare_ms, rel_tol=0.01), (key, figures)
        assert math.isclose(ratio, sampler_ms / bare_ms, rel_tol=0.01), (key, rows[f, m])
        # unit-steps per second (printed to 0.1): the batch's images per sampler step time
        assert math.isclose(unit_steps, figures["batch"] / (sampler_ms / 1e3), rel_tol=0.01, abs_tol=0.051), \
            (key, rows[f, m])
    for f in FAMILIES:
        assert figures[f"sampler_vs_bare_{f}"] == max(figures[f"sampler_vs_bare_{f}_{m}"] for m in METHODS)

    for key in ("own_module_blank_tile_fraction", "own_module_blank_tile_fraction_vit"):
        assert 0 <= figures[key] <= 1, (key, figures[key])
    # the blank-tile table names both families
    assert any(re.match(r"resnet18\s+\d+\s+\d+\s+[\d.]+", line) for line in lines)
    assert any(re.match(r"vit\s+\d+\s+\d+\s+[\d.]+", line) for line in lines)
