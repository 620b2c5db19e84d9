"""Feature evolution: the same synthesis, repeated on successive states of a network.

`EvolutionRecorder` holds what must stay fixed from frame to frame (the units, the
method, the initial codes, the noise seed and a pool of real validation images) so
that what changes between frames is the network.  It synthesizes a frame for any
network state, finds the pool's `top_k` most activating images of each unit at that
state, writes them under `<output_dir>/` (frames, a grid per step, `evolution.json`)
and rebuilds the reports (featvis.evolution.report), measuring how far each frame is
from its unit's final one in the judge's feature space.  It knows nothing of Lightning: the
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
from torchvision.utils import make_grid

from featvis.errors import CheckpointError, ConfigError
from featvis.io import remove_partials, save_png, save_text
from featvis.nets.adapters import fit_images
from featvis.nets.layers import activations, frozen
from featvis.evolution.report import build_reports, grid_file, step_name
from featvis.reports.grids import labelled_grid
from featvis.synthesis.methods import (Method, Unit, load_method, method_config, needs_real_spectrum, sampler_settings,
                                      units_of)
from featvis.synthesis.real import RealImages
from featvis.synthesis.settings import SynthesisSpec
from featvis.synthesis.synthesize import Judge, load_judge, logits_layer_of, synthesize, unit_values

FORMAT_VERSION = 1


class EvolutionRecorder:
    """Synthesize `units` x `seeds` for a network state and record the frame on disk."""

    def __init__(self, spec: SynthesisSpec, method: Mapping[str, Any] | str, output_dir: str | Path = "evolution",
                 real_images: int = 256):
        """`spec`: what each frame synthesizes (units, generator, prior, judge, seeds, steps, ...);
        `real_images`: the size of the pool of validation images the top-k come from."""
        if int(real_images) < 0:
            raise ConfigError(f"real_images={real_images}; expected a non-negative integer")
        self.spec = spec
        self.method = method_config(method) if isinstance(method, str) else dict(method)
        self.output_dir = Path(output_dir)
        self.real_images = int(real_images)
        self.settings = sampler_settings(self.method, spec.steps)
        # Filled by prepare(); z0 and frames are the state that resumes with a checkpoint.
        self.units: list[Unit] = []
        self.sizes: dict[str, int] = {}
        self.class_names: list[str] = []
        self.parts: Method | None = None
        self.judge: Judge | None = None
        self.z0: torch.Tensor | None = None
        self.real: RealImages | None = None  # the pool the top-k real images come from
        self.frames: list[dict[str, Any]] = []

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self, net: nn.Module, class_names: list[str], real: Any = None) -> None:
        """Parse the units against `net` (a target: see featvis.as_target), load the priors and draw
        the fixed starting points once.

        `real`: batches (images, labels) of validation images in [0, 1] (or as the target reads
        them, for a Target: they are shown de-normalized); the first `real_images` of them are the
        pool each frame's top-k real images come from (none: frames have no top-k)."""
        if self.parts is not None:
            return
        self.class_names = list(class_names)
        self.spec = self.spec.but(logits_layer=self.spec.logits_layer or logits_layer_of(net),
                                  class_names=self.class_names)
        # Building networks to load checkpoints into draws initial weights, and a DataLoader draws a
        # seed when iterated: neither from the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            self.units, self.sizes = units_of(net, self.spec.units, self.spec.layer or self.spec.logits_layer,
                                              self.class_names, self.spec.spatial, self.spec.pre_relu)
            # MACO's magnitude spectrum comes from the same pool when the method names no saved one.
            spectrum = needs_real_spectrum(self.method)
            if real is not None and self.real_images and (self.spec.top_k or spectrum):
                # turned back into [0, 1] RGB by a Target's to_display, as uint8 (a 227 px pool stays small)
                self.real = RealImages(real, net.image_size, self.real_images, uint8=True, batch_size=64,
                                       to_display=getattr(net, "to_display", None))
                if not len(self.real):
                    raise ConfigError("the validation data has no images; expected some for the top-k real images "
                                      "(or top_k=0)")
            self.parts = load_method(self.method, self.spec.generator.ckpt, self.spec.prior.ckpt, net.image_size,
                                     real=self.real if spectrum else None)
            if not self.spec.top_k:
                self.real = None  # frames have no top-k
            if self.spec.judge.ckpt:
                self.judge = load_judge(self.spec.judge.ckpt, self.spec.judge.feature_layer, target=net)
                if self.judge.class_names != self.class_names:
                    raise ConfigError(f"judge.ckpt={self.spec.judge.ckpt} has other classes than the target; "
                                      "expected a classifier of the same classes")
        if self.z0 is None:
            self.z0 = self.parts.start(len(self.units), self.spec.seeds)

    # -- synthesis ----------------------------------------------------------------------------
    def synthesize(self, net: nn.Module, unit_indices: list[int] | None = None) -> tuple[torch.Tensor, list[dict]]:
        """Images (len(unit_indices) * seeds, 3, S, S) and one metrics row per image.

        Works on a copy of `net`, with gradients on even under inference mode, and leaves the
        global RNG streams as they were: the caller's network, grads and randomness are untouched.
        """
        indices = list(range(len(self.units))) if unit_indices is None else list(unit_indices)
        if not indices:
            return torch.empty(0, device="cpu"), []
        rows = torch.tensor([u * self.spec.seeds + k for u in indices for k in range(self.spec.seeds)], device="cpu")
        with torch.inference_mode(False):
            target = copy.deepcopy(net).eval()  # the training network's BN statistics and hooks stay its own
        found = synthesize(target, [self.units[u] for u in indices], self.parts, self.spec, start=self.z0[rows],
                           judge=self.judge, evaluation=False)
        keys = ("unit", "layer", "seed", "blank", "judge_correct", "filter_match", "filter_match_other")
        metric_rows = [{**{k: row[k] for k in keys if k in row},
                        **{k: row[self.spec.keep][k] for k in ("activation", "probability", "rank")}}
                       for row in found.rows]
        if self.real is not None:
            top = self.top_real(target, [self.units[u] for u in indices])
            for b, row in enumerate(metric_rows):
                row["top"] = top[b // self.spec.seeds]
        return found.images.cpu(), metric_rows

    def top_real(self, net: nn.Module, units: list[Unit]) -> list[list[int]]:
        """Per unit, the indices of the pool's `top_k` images that activate it most, best first."""
        with frozen(net):
            values, _ = unit_values(net, units, self.real, self.spec.spatial, len(self.real))
        return values.topk(min(self.spec.top_k, len(values)), dim=0).indices.T.tolist()

    # -- records on disk ----------------------------------------------------------------------
    def has_frame(self, step: int) -> bool:
        return any(f["step"] == step for f in self.frames)

    def recorded_steps(self) -> list[int]:
        return sorted({f["step"] for f in self.frames})

    def record(self, step: int, epoch: int, images: torch.Tensor, rows: list[dict], write: bool = True) -> None:
        """Add one frame: its images and grid on disk (when `write`), then its rows in evolution.json.

        Ranks that do not write still add the rows, so every rank holds the same state."""
        slugs = {u.label: u.slug for u in self.units}
        folder = f"frames/{step_name(step)}"
        entries = [{"step": int(step), "epoch": int(epoch), **row,
                    "file": f"{folder}/{slugs[row['unit']]}_seed{row['seed']}.png",
                    **({"top_file": f"{folder}/{slugs[row['unit']]}_top.png"} if "top" in row else {})}
                   for row in rows]
        if write:
            for image, entry in zip(images, entries):
                save_png(image, self.output_dir / entry["file"])
                if "top_file" in entry and entry["seed"] == 0:
                    top = self.real.floats(entry["top"])
                    save_png(make_grid(top, nrow=2, padding=1, pad_value=1.0), self.output_dir / entry["top_file"])
            grid = labelled_grid(images, len(images) // self.spec.seeds, [r["unit"] for r in rows[::self.spec.seeds]],
                                 [f"seed {k}" for k in range(self.spec.seeds)])
            save_png(grid, self.output_dir / grid_file(step))
        self.frames = [f for f in self.frames if f["step"] != step] + entries
        if write:
            self.write_json()

    def document(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "method": self.method.get("name"), "keep": self.spec.keep,
                "top_k": self.spec.top_k if self.real is not None else 0,
                "settings": self.settings.__dict__, "seeds": self.spec.seeds,
                "units": [{"label": u.label, "layer": u.layer, "slug": u.slug,
                           "terms": [t.record() for t in u.terms]} for u in self.units],
                "steps": self.recorded_steps(), "frames": self.frames}

    def write_json(self, summary: dict[str, Any] | None = None) -> Path:
        """evolution.json, one frame a line.  It is rewritten after every frame: json's C encoder
        (no indent) keeps that cheap as the frames add up, where the indenting pure-Python one made
        each frame slower than the one before."""
        doc = {**self.document(), **(summary or {})}
        frames = ",\n".join(json.dumps(frame) for frame in doc.pop("frames"))
        return save_text(f'{json.dumps(doc)[:-1]}, "frames": [\n{frames}\n]}}\n', self.output_dir / "evolution.json")

    def report(self) -> dict[str, Any]:
        """Strip, videos, settling plot and index.html from the recorded frames; their figures
        (per layer: distance to the final frame, settle step and its interval) go into
        evolution.json too.  Distances are in the judge's feature space (pixels without a judge)."""
        embed, space = None, "pixels"
        if self.judge is not None:
            embed, space = self.judge_features, f"judge {self.judge.feature_layer}"
        summary = build_reports(self.output_dir, self.document(), embed=embed, space=space)
        self.write_json(summary)
        return summary

    def judge_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, D): the judge's features, flattened."""
        net, layer = self.judge.net, self.judge.feature_layer
        device = next(net.parameters()).device
        with frozen(net):
            chunks = [activations(net, fit_images(batch.to(device), net.image_size), [layer])[layer].flatten(1).cpu()
                      for batch in images.split(64)]
        return torch.cat(chunks)

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
        return {"format": FORMAT_VERSION, "z0": self.z0, "noise_seed": self.spec.noise_seed,
                "frames": copy.deepcopy(self.frames)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.z0 = state.get("z0")
        self.spec = self.spec.but(noise_seed=int(state.get("noise_seed", self.spec.noise_seed)))
        self.frames = copy.deepcopy(list(state.get("frames", [])))
        self.check_record()

    def check_record(self) -> None:
        """Stop a resume whose evolution.json no longer reads as this recorder's record.

        It is written whole (a temporary name, then a rename), so a damaged one means something
        else changed the run dir: the resume would overwrite it, and the frames beside it may be
        damaged too.  Without the file the resume goes on: it is rewritten from the checkpoint."""
        path = self.output_dir / "evolution.json"
        if not path.is_file():
            return
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            problem = f"is not valid JSON ({err})"
        except (OSError, UnicodeDecodeError) as err:
            problem = f"cannot be read ({type(err).__name__})"
        else:
            if isinstance(doc, dict) and isinstance(doc.get("frames"), list):
                return
            problem = "holds no list of frames"
        raise CheckpointError(f"feature evolution record {path} {problem}; expected the record of this run's "
                              f"frames (remove it to resume: it is rewritten from the checkpoint's "
                              f"{len(self.frames)} frame records)")
