"""benchmarks/train_speed.py end to end at its smallest: the table, then its figures as one JSON line."""

import json
import math
import os
import subprocess
import sys

from .conftest import ROOT


def test_train_speed_benchmark_times_both_layouts():
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--steps", "1",
                           "--warmup", "1", "--rounds", "1", "--generator-steps", "600"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert any(line.startswith("generator_step_speedup") for line in lines[:-1])  # the table came first
    times = {f"{task}_ms_{layout}": figures[f"{task}_ms_{layout}"]
             for task in ("generator", "classifier") for layout in ("nchw", "channels_last")}
    for key, value in {**times, "generator_minutes_at_600": figures["generator_minutes_at_600"]}.items():
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    for task in ("generator", "classifier"):
        ratio = times[f"{task}_ms_nchw"] / times[f"{task}_ms_channels_last"]
        assert math.isclose(figures[f"{task}_step_speedup"], ratio, rel_tol=0.02), (task, figures)
    assert math.isclose(figures["generator_minutes_at_600"], 600 * times["generator_ms_channels_last"] / 6e4,
                        rel_tol=0.02)
