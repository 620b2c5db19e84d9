"""benchmarks/gpu.py end to end on the CPU (--smoke): its table and its figures as the last line of JSON."""

import json
import math
import os
import subprocess
import sys

from .conftest import ROOT

POSITIVE = ["sampler_vs_bare_64", "sampler_vs_bare_256", "unit_steps_per_second_256_bf16",
            "fraction_of_bf16_peak_256", "gan_images_per_second", "matmul_gflops_fp32", "matmul_gflops_bf16",
            *(f"{kind}_ms_{slot}_{precision}" for kind in ("sampler", "bare") for slot in ("64", "256")
              for precision in ("fp32", "bf16"))]


def test_gpu_benchmark_smoke_on_cpu():
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert any(line.startswith("sampler_vs_bare_256") for line in lines[:-1])  # the table came first
    assert (figures["device"], figures["preset"], figures["units"], figures["steps"]) == ("cpu", "tiny", [4, 8], 3)
    for key in POSITIVE:
        value = figures[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    # No TF32 on the CPU: reported as missing, not as a number.
    assert [k for k in figures if "tf32" in k and figures[k] is not None] == []
    assert {f"{kind}_ms_{slot}_tf32" for kind in ("sampler", "bare") for slot in ("64", "256")} <= set(figures)
    assert figures["matmul_gflops_tf32"] is None
    assert figures["best_precision_64"] in ("fp32", "bf16") and figures["best_precision_256"] in ("fp32", "bf16")
