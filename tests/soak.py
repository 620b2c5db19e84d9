"""A long feature-evolution run: does it hold over many frames?

A tiny classifier trains under `FeatureEvolution` with a frame at every step (pixel AM, one
sampler step, 32 px, a few units) and the reports rebuilt after every frame (`live_report`).
After each frame, with garbage collected, the process's resident memory, the Python objects the
collector tracks and the open file descriptors are read, and the frame's wall and CPU time; the
report rebuild is timed on its own, since it reads every frame recorded so far and so grows with
the frame count by design.

    soak(workdir, frames=200) -> figures and per-frame rows;  print_table(result)

Figures: RSS growth per 100 frames, objects per frame and the per-frame time slope (least squares
over the frames after a warm-up), fd growth, and the rebuild time per frame at a quarter, half and
all of the frames (linear: the ratio stays near 1; a quadratic rebuild would give about 4).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from featvis.evolution import FeatureEvolution
from tests.checks import PlainClassifier

SIZE = 32
BATCH = 16


class TinyNet(nn.Module):
    """Two convs and a linear head: named layers the units can point at."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def timed(rows: list[dict[str, float]], call):
    """`call`, appending its wall and CPU seconds to `rows` (CPU time: what the work cost, whatever
    else the machine runs meanwhile)."""

    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return call(*args, **kwargs)
        finally:
            rows.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})

    return wrapper


class Probe(L.Callback):
    """Listed after FeatureEvolution: once a step's frame is recorded, reads its times, then the
    process's memory and fds."""

    def __init__(self, evolution: FeatureEvolution):
        self.evolution = evolution
        self.rows: list[dict[str, float]] = []
        self.captures: list[dict[str, float]] = []
        self.reports: list[dict[str, float]] = []  # each rebuild: one per frame, one more at the end
        # instance attributes: the callback calls them as before, now timed
        evolution.capture = timed(self.captures, evolution.capture)
        evolution.recorder.report = timed(self.reports, evolution.recorder.report)
        self._frames = self._reports = 0

    def _sample(self) -> None:
        recorded = len(self.evolution.recorder.frames)
        if recorded == self._frames:
            return
        self._frames = recorded
        # a live rebuild, if any, ran inside this frame's capture
        frame = self.captures[-1]
        report = self.reports[-1] if len(self.reports) > self._reports else {"wall": 0.0, "cpu": 0.0}
        self._reports = len(self.reports)
        gc.collect()  # what stays is what is held, not garbage awaiting a collection
        self.rows.append({"frame": len(self.rows), "rss_mb": rss_mb(), "fds": open_fds(),
                          "objects": len(gc.get_objects()),
                          "frame_s": frame["wall"], "report_s": report["wall"],
                          "synth_s": frame["wall"] - report["wall"],
                          "synth_cpu_s": frame["cpu"] - report["cpu"], "report_cpu_s": report["cpu"]})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sample()  # the frame of step 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sample()


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def soak(workdir: Path, frames: int = 200, units: tuple[str, ...] = ("conv2:0", "fc:0"),
         steps: int = 1, warmup: float = 0.1, seed: int = 0, live_report: bool = True) -> dict[str, Any]:
    """Train TinyNet for `frames - 1` steps with a frame at step 0 and after every step.

    Returns the figures (see the module's docstring) and `rows`, one per frame: rss_mb, fds,
    frame_s (the callback's wall time for the frame, its live rebuild included), report_s (the
    rebuild) and synth_s (the rest: synthesis, top-k, the frame's files and evolution.json), and
    the CPU seconds of the last two (synth_cpu_s, report_cpu_s)."""
    if frames < 8:
        raise ValueError(f"frames={frames}; expected at least 8 (a warm-up, then enough to fit a line)")
    workdir = Path(workdir)
    torch.manual_seed(seed)
    images, labels = torch.rand(64, 3, SIZE, SIZE), torch.randint(0, 4, (64,))
    data = TensorDataset(images, labels)
    # one epoch long enough for every step: no epoch ends, no validation loops between frames
    train = DataLoader(data, batch_size=BATCH, sampler=RandomSampler(data, replacement=True,
                                                                     num_samples=frames * BATCH))
    val = DataLoader(data, batch_size=BATCH)
    evolution = FeatureEvolution(units=list(units), method="pixel", dirpath=str(workdir / "evolution"),
                                 steps=steps, log_frames=0, linear_frames=0, every_n_steps=1, live_report=live_report,
                                 real_images=32, top_k=2)
    probe = Probe(evolution)
    trainer = L.Trainer(max_steps=frames - 1, callbacks=[evolution, probe], logger=False, accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=workdir)
    # One intra-op thread: on a loaded machine two threads contend for the cores and make a tiny
    # conv 50x slower and its time noise; the soak measures the callback, not the thread pool.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        trainer.fit(PlainClassifier(TinyNet()), train, val)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start

    rows = probe.rows
    first = max(int(len(rows) * warmup), 1)  # step 0's frame holds the set-up; a warm-up of allocators too
    kept = rows[first:]
    xs = [r["frame"] for r in kept]
    synth, synth_cpu = [r["synth_s"] for r in kept], [r["synth_cpu_s"] for r in kept]
    quarter = max(len(kept) // 4, 1)
    reports = rebuild_figures(rows, sorted({max(frames // 4, 5), max(frames // 2, 5), len(rows)})) \
        if live_report else {}
    return {
        "frames": frames,
        "frames_recorded": len(evolution.recorder.recorded_steps()),
        "wall_s": round(wall, 1),
        "warmup_frames": first,
        "soak_rss_growth_mb_per_100_frames": round(slope(xs, [r["rss_mb"] for r in kept]) * 100, 2),
        # the frame's time less its live rebuild (which reads every frame so far, by design): in ms
        # per frame, and relative (the drift over the run over the mean time); on wall and CPU time
        "soak_frame_time_slope": round(slope(xs, synth) * 1000, 3),
        "soak_frame_time_slope_relative": round(slope(xs, synth) * len(kept) / mean(synth), 3),
        "soak_frame_cpu_time_slope_relative": round(slope(xs, synth_cpu) * len(kept) / mean(synth_cpu), 3),
        "soak_frame_ms_mean": round(mean(synth) * 1000, 1),
        # medians of the frame CPU time in the first and last quarter after the warm-up
        "soak_frame_cpu_ms_quarters": (round(median(synth_cpu[:quarter]) * 1000, 1),
                                       round(median(synth_cpu[-quarter:]) * 1000, 1)),
        # Python objects the collector tracks: exact, unlike RSS; the recorded rows add a few per frame
        "soak_objects_per_frame": round(slope(xs, [r["objects"] for r in kept]), 1),
        "soak_fd_growth": kept[-1]["fds"] - kept[0]["fds"],
        "soak_fd_max_minus_first": max(r["fds"] for r in kept) - kept[0]["fds"],
        **reports,
        "rows": rows,
    }


def rebuild_figures(rows: list[dict[str, float]], counts: list[int]) -> dict[str, Any]:
    """The live rebuild's time at `counts` frames, and how its time per frame grows."""

    def per_frame(count: int, key: str) -> float:
        # a rebuild's seconds per frame it read, the median of the five ending at `count` frames:
        # one rebuild slowed by the machine's other work is noise
        return median([r[key] / (r["frame"] + 1) for r in rows[max(count - 5, 0):count]])

    wall = {n: per_frame(n, "report_s") for n in counts}
    cpu = {n: per_frame(n, "report_cpu_s") for n in counts}
    low, high = counts[0], counts[-1]
    return {
        "soak_report_seconds": {n: round(rows[n - 1]["report_s"], 3) for n in counts},
        "soak_report_ms_per_frame": {n: round(v * 1000, 2) for n, v in wall.items()},
        # time per frame at the last count over that at the first: ~1 linear, ~high/low quadratic
        "soak_report_time_per_frame_ratio": round(wall[high] / wall[low], 2),
        "soak_report_cpu_time_per_frame_ratio": round(cpu[high] / cpu[low], 2),
    }


def print_table(result: dict[str, Any], every: int = 20) -> None:
    rows = result["rows"]
    print(f"{'frame':>6} {'rss MB':>8} {'fds':>5} {'objects':>8} {'frame ms':>9} {'report ms':>10} {'synth ms':>9}")
    for row in rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else []):
        print(f"{row['frame']:>6} {row['rss_mb']:>8.1f} {row['fds']:>5} {row['objects']:>8} "
              f"{row['frame_s'] * 1000:>9.1f} {row['report_s'] * 1000:>10.1f} {row['synth_s'] * 1000:>9.1f}")
    for key, value in result.items():
        if key != "rows":
            print(f"{key}: {value}")
