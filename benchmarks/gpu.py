"""Speed on a GPU, side by side in one run: the DGN-AM sampler step per precision, its overhead
over a bare forward and backward, the GAN training step and the matmul peaks.

    python benchmarks/gpu.py [--device auto|cpu|cuda] [--units 64,256] [--steps 200] [--smoke]
                             [--preset caffenet|tiny]

On CUDA: the caffenet preset (CaffeNet at 227 px with fc6 of 4096 and fc8 of 1000, the DeePSiM
generator), built from conf/ with random weights: speed does not depend on what the networks
learned, and nothing is downloaded.  On the CPU: the tiny preset (64 px), fewer steps and a
smaller GAN batch.  --smoke: the tiny preset, a few units, 3 steps, a GAN batch of 4 (for CI).
Precisions: fp32 (TF32 off), tf32 (TF32 matmuls and convolutions; CUDA only, null elsewhere) and
bf16 (the sampler's autocast + channels_last).  DGN-AM settings as in benchmarks/synthesis.py,
with conf/method/dgn_am.yaml's selectivity.

Prints a table, then, as its last line, one JSON object:
  sampler_vs_bare_64   time per step of Sampler.run over --steps steps / time of the bare step
                       (G, fit to the target's size, taps, objective, gradient wrt z; same
                       precision and memory format; nothing else), at the precision whose sampler
                       is fastest, first --units count                        (target <= 1.25)
  sampler_vs_bare_256  the same at the second --units count                   (target <= 1.15)
  unit_steps_per_second_256_bf16  units x steps / s of the bf16 sampler, second count
  fraction_of_bf16_peak_256  FLOP/s of that run (FLOPs of one step's forward and backward,
                       counted by torch's FlopCounterMode) / the FLOP/s of a large bf16 matmul
                       measured in the same run                               (target >= 0.25)
  gan_images_per_second  the generator task's training step (G, D, the encoder and its comparator
                       layers, manual optimization) under a Lightning Trainer, on random images
  sampler_ms_<n>_<precision>, bare_ms_<n>_<precision>  the step times behind the ratios
  matmul_gflops_<precision>  the matmul peaks
Figures named _64 and _256 belong to the first and second --units count; `units` holds the counts.
The targets are for a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from report import print_figures
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from featvis.devices import use_channels_last
from featvis.nets import CodeStatistics, Encoder
from featvis.synthesis.objectives import ObjectiveBatch, Term
from featvis.synthesis.sampler import Sampler, SamplerSettings
from featvis.nets.layers import frozen
from featvis.synthesis.priors import ClipCodes, Decay
from featvis.synthesis.spaces import CodeSpace

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(lr=1.0, lr_end=0.01, normalize_gradient=True)
SELECTIVITY = 1.0  # conf/method/dgn_am.yaml
PRECISIONS = ("fp32", "tf32", "bf16")
SLOTS = ("64", "256")  # figure names of the first and second --units count
# name: overrides of conf/config.yaml and the classes of the target's fc8
PRESETS = {"caffenet": (["experiment=caffenet", "data.root=/unused"], 1000), "tiny": ([], 15)}
# Per mode: preset, steps, units, warm-up steps, GAN batch, GAN warm-up and timed steps,
# matmul side, least seconds of a matmul timing.
SIZES = {
    "cuda": dict(preset="caffenet", steps=200, units="64,256", warmup=5, gan_batch=64, gan_warmup=3,
                 gan_steps=20, matmul=8192, matmul_seconds=0.5),
    "cpu": dict(preset="tiny", steps=20, units="64,256", warmup=2, gan_batch=32, gan_warmup=2,
                gan_steps=8, matmul=1024, matmul_seconds=0.3),
    "smoke": dict(preset="tiny", steps=3, units="4,8", warmup=1, gan_batch=4, gan_warmup=1,
                  gan_steps=2, matmul=512, matmul_seconds=0.1),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of fn(), with the device's queued work drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 matmuls and convolutions on or off inside (None: as they are); both flags restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, n: int, min_seconds: float) -> float:
    a, b, out = (torch.rand(n, n, device=device, dtype=dtype) for _ in range(3))

    def repeat(times: int) -> None:
        for _ in range(times):
            torch.mm(a, b, out=out)

    repeat(1)
    times = 1
    while (seconds := timed(lambda: repeat(times), device)) < min_seconds:
        times *= 2
    return 2 * n**3 * times / seconds


def build_sampler(nets: dict, units: list[int], steps: int, bf16: bool) -> Sampler:
    objectives = ObjectiveBatch([[Term("fc8", u)] for u in units], {"fc8": nets["classes"]},
                                selectivity=SELECTIVITY)
    # Every sampler starts from NCHW weights; the bf16 one turns them channels_last itself.
    for net in (nets["target"], nets["generator"]):
        net.to(memory_format=torch.contiguous_format)
    return Sampler(nets["target"], objectives, SamplerSettings(steps=steps, **SETTINGS),
                   space=nets["space"], operators=[ClipCodes(nets["upper"]), Decay(0.99)], autocast=bf16,
                   channels_last=bf16)


def bare_step(sampler: Sampler, z0: torch.Tensor, bf16: bool):
    """G, fit, taps, objective and the gradient wrt z: the work of a step without the sampler's."""
    z = z0.clone().requires_grad_(True)
    memory_format = torch.channels_last if bf16 else torch.contiguous_format

    def step() -> None:
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
            values = sampler.objectives(sampler.taps(sampler.render(z).contiguous(memory_format=memory_format)))
        torch.autograd.grad(values.float().sum(), z)

    return step


def time_precision(nets: dict, units: list[int], z0: torch.Tensor, sizes: dict, steps: int,
                   precision: str, device: torch.device) -> tuple[float, float]:
    """Seconds per step of Sampler.run and of the bare step, each after a warm-up."""
    bf16 = precision == "bf16"
    with tf32(None if bf16 else precision == "tf32"):
        build_sampler(nets, units, sizes["warmup"], bf16).run(z0)
        sampler = build_sampler(nets, units, steps, bf16)
        sampler_seconds = timed(lambda: sampler.run(z0), device) / steps
        step = bare_step(sampler, z0, bf16)
        sampler.objectives.to(device)
        with frozen(sampler.target, sampler.taps, sampler.space):
            for _ in range(sizes["warmup"]):
                step()
            bare_seconds = timed(lambda: [step() for _ in range(steps)], device) / steps
    return sampler_seconds, bare_seconds


def step_flops(nets: dict, units: list[int], z0: torch.Tensor) -> int:
    """FLOPs of one step's forward and backward (precision does not change the count)."""
    sampler = build_sampler(nets, units, 1, bf16=False)
    sampler.objectives.to(z0.device)
    z = z0.clone().requires_grad_(True)
    # backward(), not autograd.grad: the counter's hooks do not support the latter.
    with frozen(nets["target"], sampler.taps, nets["generator"]), FlopCounterMode(display=False) as counter:
        sampler.objectives(sampler.taps(sampler.render(z))).sum().backward()
    return counter.get_total_flops()


class StepTimer(L.Callback):
    """Wall time of the training steps after the first `warmup`, and how many ran D's and G's update."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0
        self.d_steps = self.g_steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:  # the balance pauses D or G from one step to the next
            self.d_steps += pl_module.balance.train_d
            self.g_steps += pl_module.balance.train_g

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        self.end = time.perf_counter()


def gan_throughput(cfg, nets: dict, sizes: dict, device: torch.device) -> dict:
    """Images/s of GeneratorModule's training step, built as run.py's train_generator builds it."""
    encoder = nets["encoder"]
    generator = instantiate(cfg.generator.net, code_dim=encoder.code_dim)
    discriminator = instantiate(cfg.generator.discriminator, image_size=encoder.image_size,
                                code_dim=encoder.code_dim if cfg.generator.code_branch else 0)
    module = instantiate(cfg.task.module, generator=generator, discriminator=discriminator, encoder=encoder,
                         code_stats=nets["stats"], encoder_record={}, comparators=nn.ModuleList())
    use_channels_last(module, cfg.performance.channels_last)  # the layout train.py trains in
    batch, warmup, steps = sizes["gan_batch"], sizes["gan_warmup"], sizes["gan_steps"]
    allow_tf32 = cfg.get("performance", {}).get("tf32") if device.type == "cuda" else None
    images = torch.rand(batch, 3, encoder.image_size, encoder.image_size)
    if device.type == "cuda":
        images = images.pin_memory()
    # The same random batch every step: what the step costs does not depend on the pixels.
    loader = DataLoader([(images, torch.zeros(batch, dtype=torch.long))] * (warmup + steps), batch_size=None)
    timer = StepTimer(warmup, device)
    with tempfile.TemporaryDirectory(prefix="featvis-gpu-") as root:
        trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                            precision=cfg.trainer.precision, limit_val_batches=0, num_sanity_val_steps=0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, log_every_n_steps=1, callbacks=[timer],
                            default_root_dir=root)
        # TF32 as train.py sets it, where the config has the switch.
        with tf32(allow_tf32):
            trainer.fit(module, train_dataloaders=loader)
    return {"gan_images_per_second": batch * steps / (timer.end - timer.start), "gan_batch": batch,
            "gan_steps": steps, "gan_steps_with_d_and_g": f"{timer.d_steps}/{steps} D, {timer.g_steps}/{steps} G",
            "gan_precision": str(cfg.trainer.precision) + (" (tf32)" if allow_tf32 else "")
            + (", channels-last" if cfg.performance.channels_last else "")}


def build_nets(cfg, classes: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    encoder = Encoder(instantiate(cfg.model, num_classes=classes), cfg.encoder.code_layer,
                      cfg.encoder.comparator_layer, cfg.encoder.logits_layer)
    code_dim = encoder.code_dim
    stats = CodeStatistics(code_dim).fit(torch.rand(1024, code_dim).relu_() * 2)
    generator = instantiate(cfg.generator.net, code_dim=code_dim).eval().to(device)
    return {"target": instantiate(cfg.model, num_classes=classes).eval().to(device),
            "generator": generator, "space": CodeSpace(generator, stats), "encoder": encoder, "stats": stats,
            "upper": stats.quantile(0.99), "classes": classes,
            "code_dim": code_dim, "image_size": encoder.image_size}


def significant(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--units", help="two unit counts, comma-separated (default 64,256; 4,8 with --smoke)")
    parser.add_argument("--steps", type=int, help="sampler steps timed (default 200 on CUDA, 20 on the CPU)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: seconds on the CPU")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="default: caffenet on CUDA, else tiny")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    sizes = SIZES["smoke" if args.smoke else device.type]
    steps = args.steps or sizes["steps"]
    units = [int(u) for u in (args.units or sizes["units"]).split(",")]
    if len(units) != 2 or min(units) < 1 or steps < 1:
        parser.error("expected --units of two positive counts and a positive --steps")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(module\(s\) in eval mode|does not have many workers|"
                                              r"smaller than the logging interval|no `val_dataloader`).*")

    preset = args.preset or sizes["preset"]
    overrides, classes = PRESETS[preset]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "task=generator", "logger=none"])
    nets = build_nets(cfg, classes, device)

    precisions = [p for p in PRECISIONS if p != "tf32" or device.type == "cuda"]
    seconds, times, ratios, best = {}, {}, {}, {}
    for slot, n in zip(SLOTS, units):
        z0 = nets["stats"].sample(n, torch.Generator().manual_seed(0)).to(device)
        unit_classes = [(97 * u) % classes for u in range(n)]
        for precision in PRECISIONS:
            if precision not in precisions:
                times[f"sampler_ms_{slot}_{precision}"] = times[f"bare_ms_{slot}_{precision}"] = None
                continue
            sampler_s, bare_s = time_precision(nets, unit_classes, z0, sizes, steps, precision, device)
            seconds[slot, precision] = sampler_s, bare_s
            times[f"sampler_ms_{slot}_{precision}"] = significant(1e3 * sampler_s)
            times[f"bare_ms_{slot}_{precision}"] = significant(1e3 * bare_s)
            print(f"  {n} units, {precision}: sampler {1e3 * sampler_s:.4g} ms/step, bare {1e3 * bare_s:.4g} ms",
                  flush=True)
        best[slot] = min(precisions, key=lambda p: seconds[slot, p][0])
        ratios[slot] = seconds[slot, best[slot]][0] / seconds[slot, best[slot]][1]
    flops = step_flops(nets, [(97 * u) % classes for u in range(units[1])],
                       nets["stats"].sample(units[1], torch.Generator().manual_seed(0)).to(device))

    peaks = {}
    for precision, dtype in (("fp32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16)):
        with tf32(precision == "tf32"):
            peaks[precision] = (matmul_flops_per_second(device, dtype, sizes["matmul"], sizes["matmul_seconds"])
                                if precision in precisions else None)
    bf16_seconds = seconds["256", "bf16"][0]
    gan = gan_throughput(cfg, nets, sizes, device)

    gpu = device.type == "cuda"
    figures = {
        "sampler_vs_bare_64": round(ratios["64"], 3),
        "sampler_vs_bare_256": round(ratios["256"], 3),
        "unit_steps_per_second_256_bf16": significant(units[1] / bf16_seconds),
        "fraction_of_bf16_peak_256": round(flops / bf16_seconds / peaks["bf16"], 4),
        "gan_images_per_second": significant(gan.pop("gan_images_per_second")),
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "preset": preset, "image_size": nets["image_size"], "code_dim": nets["code_dim"],
        "units": units, "steps": steps, "best_precision_64": best["64"], "best_precision_256": best["256"],
        **times,
        **{f"matmul_gflops_{p}": significant(v / 1e9) if v else None for p, v in peaks.items()},
        "step_gflop_256": significant(flops / 1e9),
        **gan,
        "sampler_check_every": inspect.signature(Sampler).parameters["check_every"].default,
        "torch_threads": torch.get_num_threads(),
    }
    on_gpu = "" if gpu else " (GPU)"
    targets = {"sampler_vs_bare_64": f"<= 1.25{on_gpu}", "sampler_vs_bare_256": f"<= 1.15{on_gpu}",
               "fraction_of_bf16_peak_256": f">= 0.25{on_gpu}"}
    table = {name: ("skip" if value is None else ",".join(map(str, value)) if isinstance(value, list) else value)
             for name, value in figures.items()}
    print_figures(table, targets)
    return {"device": "cuda" if gpu else "cpu", "device_name": figures.pop("device"), **figures}


if __name__ == "__main__":
    print(json.dumps(main()))
