"""Feature evolution: the same synthesis, repeated on successive states of a network.

`EvolutionRecorder` holds what must stay fixed from frame to frame (the units, the
method, the initial codes and the noise seed) so that what changes between frames
is the network.  It synthesizes a frame for any network state, writes it under
`<output_dir>/` (frames, a grid per step, `evolution.json`) and rebuilds the
reports (featvis.reports.evolution).  It knows nothing of Lightning: the
`FeatureEvolution` callback drives it during training, `visualize.py
mode=evolution` drives it over saved checkpoints.

Files are written to temporary names and renamed; `evolution.json` is rewritten
after each frame's images are in place, so it never names a missing file.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featvis.errors import ConfigError
from featvis.reports.evolution import build_reports, grid_file, step_name
from featvis.io import remove_partials, save_png, save_text
from featvis.reports.grids import labelled_grid
from featvis.synthesis.methods import Method, Unit, load_method, sampler_settings, units_of
from featvis.synthesis.synthesize import Judge, load_judge, synthesize

FORMAT_VERSION = 1


class EvolutionRecorder:
    """Synthesize `units` x `seeds` for a network state and record the frame on disk."""

    def __init__(
        self,
        units: Any,
        method: Mapping[str, Any],
        generator_ckpt: str | None = None,
        prior_ckpt: str | None = None,
        judge_ckpt: str | None = None,
        output_dir: str | Path = "evolution",
        layer: str | None = None,
        seeds: int = 2,
        steps: int | None = None,
        spatial: str = "center",
        keep: str = "best",
        noise_seed: int = 0,
        logits_layer: str = "fc8",
    ):
        if int(seeds) < 1:
            raise ConfigError(f"seeds={seeds}; expected a positive number of seeds per unit")
        if keep not in ("best", "last"):
            raise ConfigError(f"keep={keep!r}; expected best or last")
        self.unit_spec, self.layer = units, layer
        self.method = dict(method)
        self.generator_ckpt, self.prior_ckpt, self.judge_ckpt = generator_ckpt, prior_ckpt, judge_ckpt
        self.output_dir = Path(output_dir)
        self.seeds, self.steps, self.spatial, self.keep = int(seeds), steps, spatial, keep
        self.noise_seed = int(noise_seed)
        self.logits_layer = logits_layer  # units of this layer are classes: the judge is asked about them
        self.settings = sampler_settings(self.method, steps)
        # Filled by prepare(); z0 and frames are the state that resumes with a checkpoint.
        self.units: list[Unit] = []
        self.sizes: dict[str, int] = {}
        self.class_names: list[str] = []
        self.parts: Method | None = None
        self.judge: Judge | None = None
        self.z0: torch.Tensor | None = None
        self.frames: list[dict[str, Any]] = []

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self, net: nn.Module, class_names: list[str]) -> None:
        """Parse the units against `net`, load the priors and draw the fixed starting points once."""
        if self.parts is not None:
            return
        self.class_names = list(class_names)
        # Building networks to load checkpoints into draws initial weights: not from the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            self.units, self.sizes = units_of(net, self.unit_spec, self.layer, self.class_names, self.spatial)
            self.parts = load_method(self.method, self.generator_ckpt, self.prior_ckpt, net.image_size)
            if self.judge_ckpt:
                self.judge = load_judge(self.judge_ckpt, target=net)
                if self.judge.class_names != self.class_names:
                    raise ConfigError(f"judge_ckpt={self.judge_ckpt} has other classes than the target; "
                                      "expected a classifier of the same classes")
        if self.z0 is None:
            self.z0 = self.parts.start(len(self.units), self.seeds)

    # -- synthesis ----------------------------------------------------------------------------
    def synthesize(self, net: nn.Module, unit_indices: list[int] | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Images (len(unit_indices) * seeds, 3, S, S) and one metrics row per image.

        Works on a copy of `net`, with gradients on even under inference mode, and leaves the
        global RNG streams as they were: the caller's network, grads and randomness are untouched.
        """
        indices = list(range(len(self.units))) if unit_indices is None else list(unit_indices)
        if not indices:
            return torch.empty(0, device="cpu"), []
        rows = torch.tensor([u * self.seeds + k for u in indices for k in range(self.seeds)], device="cpu")
        with torch.inference_mode(False):
            target = copy.deepcopy(net).eval()  # the training network's BN statistics and hooks stay its own
        found = synthesize(target, [self.units[u] for u in indices], self.parts, class_names=self.class_names,
                           seeds=self.seeds, steps=self.steps, spatial=self.spatial, keep=self.keep,
                           start=self.z0[rows], noise_seed=self.noise_seed, judge=self.judge, evaluation=False,
                           logits_layer=self.logits_layer)
        keys = ("unit", "layer", "seed", "blank", "judge_correct")
        metric_rows = [{**{k: row[k] for k in keys if k in row},
                        **{k: row[self.keep][k] for k in ("activation", "probability", "rank")}}
                       for row in found.rows]
        return found.images.cpu(), metric_rows

    # -- records on disk ----------------------------------------------------------------------
    def has_frame(self, step: int) -> bool:
        return any(f["step"] == step for f in self.frames)

    def recorded_steps(self) -> list[int]:
        return sorted({f["step"] for f in self.frames})

    def record(self, step: int, epoch: int, images: torch.Tensor, rows: list[dict], write: bool = True) -> None:
        """Add one frame: its images and grid on disk (when `write`), then its rows in evolution.json.

        Ranks that do not write still add the rows, so every rank holds the same state."""
        slugs = {u.label: u.slug for u in self.units}
        entries = [{"step": int(step), "epoch": int(epoch), **row,
                    "file": f"frames/{step_name(step)}/{slugs[row['unit']]}_seed{row['seed']}.png"} for row in rows]
        if write:
            for image, entry in zip(images, entries):
                save_png(image, self.output_dir / entry["file"])
            grid = labelled_grid(images, len(images) // self.seeds, [r["unit"] for r in rows[::self.seeds]],
                                 [f"seed {k}" for k in range(self.seeds)])
            save_png(grid, self.output_dir / grid_file(step))
        self.frames = [f for f in self.frames if f["step"] != step] + entries
        if write:
            self.write_json()

    def document(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "method": self.method.get("name"), "keep": self.keep,
                "settings": self.settings.__dict__, "seeds": self.seeds,
                "units": [{"label": u.label, "layer": u.layer, "slug": u.slug,
                           "terms": [t.__dict__ for t in u.terms]} for u in self.units],
                "steps": self.recorded_steps(), "frames": self.frames}

    def write_json(self, summary: dict[str, Any] | None = None) -> Path:
        return save_text(json.dumps({**self.document(), **(summary or {})}, indent=1),
                         self.output_dir / "evolution.json")

    def report(self) -> dict[str, Any]:
        """Strip, videos, change plot and index.html from the recorded frames; their figures
        (change per layer, settle steps) go into evolution.json too."""
        summary = build_reports(self.output_dir, self.document())
        self.write_json(summary)
        return summary

    def reconcile_disk(self) -> None:
        """Make the folder agree with the recorded frames: after a resume, frames written after the
        checkpoint was saved are removed (they will be synthesized again at the same steps)."""
        keep = {step_name(s) for s in self.recorded_steps()}
        for path in [*self.output_dir.glob("frames/step*"), *self.output_dir.glob("grids/step*.png")]:
            if path.stem not in keep:  # frames/step0000123 (a folder) or grids/step0000123.png
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        remove_partials(self.output_dir)
        if self.frames or self.output_dir.exists():
            self.write_json()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "z0": self.z0, "noise_seed": self.noise_seed,
                "frames": copy.deepcopy(self.frames)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.z0 = state.get("z0")
        self.noise_seed = int(state.get("noise_seed", self.noise_seed))
        self.frames = copy.deepcopy(list(state.get("frames", [])))
