"""Speed of the sampler's batched step (tiny preset, CPU), DGN-AM settings.

    python benchmarks/synthesis.py [--units 64] [--steps 20]

Speed does not depend on what the networks learned, so the tiny-preset target and generator
are built with random weights here.  Prints a table, then, as its last line, one JSON object:
  batched_speedup          units*steps/s with all units in one batch / one unit at a time,
                           measured in the same run                          (target >= 2.5)
  fraction_of_matmul_peak  FLOP/s of the batched run (FLOPs of G and the target, forward and
                           backward, counted by torch's FlopCounterMode) / the FLOP/s of a
                           large fp32 matmul measured in the same run          (target >= 0.40)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from report import print_figures
from torch.utils.flop_counter import FlopCounterMode

from featvis.nets import AlexNet, CodeStatistics, Generator
from featvis.synthesis.objectives import ObjectiveBatch, Term
from featvis.synthesis.sampler import Sampler, SamplerSettings
from featvis.nets.layers import frozen
from featvis.synthesis.priors import ClipCodes, Decay
from featvis.synthesis.spaces import CodeSpace

SETTINGS = dict(lr=1.0, lr_end=0.01, normalize_gradient=True)


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def make_sampler(target, generator, stats, units: list[int], steps: int) -> Sampler:
    objectives = ObjectiveBatch([[Term("fc8", u)] for u in units], {"fc8": target.num_classes})
    return Sampler(target, objectives, SamplerSettings(steps=steps, **SETTINGS), space=CodeSpace(generator, stats),
                   operators=[ClipCodes(stats.quantile(0.99)), Decay(0.99)])


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loop-units", type=int, default=16, help="units timed one at a time")
    args = parser.parse_args()
    torch.manual_seed(0)
    target = AlexNet(num_classes=15, image_size=64).eval()
    generator = Generator(1024, fc_dims=[1024], start_channels=128,
                          stages=[[96, 96], [48, 0], [24, 0], [12, 0]]).eval()
    stats = CodeStatistics(1024).fit(torch.rand(4096, 1024).relu_() * 2)
    units = [u % 15 for u in range(args.units)]
    z0 = stats.sample(args.units, torch.Generator().manual_seed(0))

    batched = make_sampler(target, generator, stats, units, args.steps)
    make_sampler(target, generator, stats, units[:2], 2).run(z0[:2])  # warm-up
    start = time.perf_counter()
    batched.run(z0)
    batched_seconds = time.perf_counter() - start
    batched_rate = args.units * args.steps / batched_seconds

    start = time.perf_counter()
    for i in range(args.loop_units):
        make_sampler(target, generator, stats, [units[i]], args.steps).run(z0[i:i + 1])
    loop_rate = args.loop_units * args.steps / (time.perf_counter() - start)

    # One step's forward and backward, the work the sampler repeats `steps` times (the few
    # forwards after the last step are left out, so the fraction errs low).
    # Frozen as in the sampler: no weight gradients are computed or counted.
    z = z0.clone().requires_grad_(True)
    with frozen(target, batched.taps, generator), FlopCounterMode(display=False) as counter:
        batched.objectives(batched.taps(batched.render(z))).sum().backward()
    flops_per_second = counter.get_total_flops() * args.steps / batched_seconds
    peak = matmul_flops_per_second()

    figures = {
        "batched_speedup": round(batched_rate / loop_rate, 2),
        "fraction_of_matmul_peak": round(flops_per_second / peak, 3),
        "batched_unit_steps_per_second": round(batched_rate, 1),
        "loop_unit_steps_per_second": round(loop_rate, 1),
        "batched_gflops_per_second": round(flops_per_second / 1e9, 1),
        "matmul_gflops_per_second": round(peak / 1e9, 1),
        "units": args.units, "steps": args.steps, "torch_threads": torch.get_num_threads(),
    }
    targets = {"batched_speedup": ">= 2.5", "fraction_of_matmul_peak": ">= 0.40"}
    print_figures(figures, targets)
    return figures


if __name__ == "__main__":
    print(json.dumps(main()))
