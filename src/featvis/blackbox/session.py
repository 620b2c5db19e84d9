"""A closed-loop experiment: featvis proposes images, responses come from outside (a recorded
neuron, a remote model), and the search learns from them one generation at a time.

    from featvis.blackbox import Session
    session = Session(generator="G.ckpt", method="dgn_cmaes", units=["ch12"], output_dir="exp/ch12")
    images = session.ask()        # also written: exp/ch12/generations/0000/0000.png ... + images.csv
    session.tell(responses)       # one number per image, in images.csv's order

The experiment's state (the strategy's tensors, its random stream, the generation asked but not
yet told) goes to `<output_dir>/session.pt` atomically at every ask and tell, so a session opened
again on the same folder resumes where the last one was: a generation asked and not told is asked
again (the same images), a generation told is never repeated.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from featvis.errors import CheckpointError, ConfigError
from featvis.io import read_checkpoint, save_bytes, save_png, save_text, writable_dir
from featvis.blackbox.search import best_kept, dimension_scale, repaired, space_sampler

STATE_FILE = "session.pt"
STATE_FORMAT = 1


def read_responses(path: Path, images: Sequence[str]) -> torch.Tensor:
    """One response per image from a CSV file: a column `response` (with a column `image` naming
    each image, in any order), or, without a header, one number a line in `images`' order."""
    try:
        rows = [row for row in csv.reader(io.StringIO(path.read_text())) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}); expected a CSV file of one response "
                          "per image") from None
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    named = "response" in header
    column = header.index("response") if named else 0
    body = rows[1:] if named else rows
    if len(body) != len(images):
        raise ConfigError(f"{path} holds {len(body)} responses; expected {len(images)}, one per image of "
                          "this generation (images.csv)")
    values, order = [], list(range(len(images)))
    if named and "image" in header:
        where = {name: k for k, name in enumerate(images)}
        order = []
        for line, row in enumerate(body, start=2):
            name = row[header.index("image")].strip() if len(row) > header.index("image") else ""
            if name not in where:
                raise ConfigError(f"{path} line {line}: image {name!r} is not one of this generation's; expected "
                                  f"names from images.csv ({images[0]} ...)")
            order.append(where.pop(name))
    for line, row in enumerate(body, start=2 if named else 1):
        cell = row[column].strip() if len(row) > column else ""
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{path} line {line}: {cell!r} is not a finite number; expected one response per image")
        values.append(value)
    responses = torch.empty(len(images), device="cpu")
    responses[torch.tensor(order, device="cpu")] = torch.tensor(values, device="cpu")
    return responses


class Session:
    """An ask/tell search over `method`'s space (a search method: dgn_cmaes, dgn_ga, ...) for
    `units` (labels of what responds: neurons, channels), `seeds` independent runs each."""

    def __init__(self, generator: str | Path | None = None, method: str | Mapping[str, Any] = "dgn_cmaes",
                 units: Sequence[Any] = ("unit",), seeds: int = 1, output_dir: str | Path = "closed_loop",
                 seed: int = 0, image_size: int = 64, overrides: Sequence[str] = ()):
        from featvis.synthesis.methods import load_method, method_config

        config = method_config(method, *overrides) if isinstance(method, str) else dict(method)
        self.method = load_method(config, str(generator) if generator else None, None, image_size)
        if self.method.search is None:
            raise ConfigError(f"method={self.method.name} takes gradient steps; expected a search method for a "
                              "closed loop (dgn_cmaes, dgn_ga)")
        self.units = [str(u) for u in units]
        if not self.units or isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"units={list(units)}, seeds={seeds}; expected at least one unit and a positive "
                              "number of seeds")
        self.seeds, self.seed = seeds, int(seed)
        self.output_dir = writable_dir(Path(output_dir).expanduser(), "closed_loop.dir")
        self.path = self.output_dir / STATE_FILE
        self.space = self.method.space
        start = self.method.start(len(self.units), seeds)
        self.shape = start.shape[1:]
        self.dim = start[0].numel()
        self.size = self.method.search.size(self.dim)
        self.sample = space_sampler(self.space)
        self.identity = {"method": self.method.name, "units": self.units, "seeds": seeds, "seed": self.seed,
                         "search": {k: v for k, v in (config.get("search") or {}).items()}}
        if self.path.exists():
            self._load()
        else:
            self.generator = torch.Generator(device="cpu").manual_seed(self.seed)
            self.state = self.method.search.init(start.flatten(1).float(), dimension_scale(self.space, self.dim),
                                                 self.sample, self.generator)
            self.generation, self.pending = 0, None
            self.best_value = torch.full((len(start),), -math.inf, device="cpu")
            self.best_z = start.flatten(1).float().clone()
            self.history: list[list[float]] = []
            self._save()

    # -- what the experimenter sees -------------------------------------------------------------

    @property
    def runs(self) -> int:
        return len(self.units) * self.seeds

    def folder(self, generation: int | None = None) -> Path:
        """Where a generation's images, images.csv and responses.csv live."""
        return self.output_dir / "generations" / f"{self.generation if generation is None else generation:04d}"

    def image_names(self) -> list[str]:
        return [f"{k:04d}.png" for k in range(self.runs * self.size)]

    def ask(self) -> torch.Tensor:
        """The next generation's images (runs x population, 3, S, S), unit-major, also written to
        folder() with images.csv (image, unit, seed); the generation asked and not told, again."""
        with self._locked():
            if self.pending is None:
                draw_state = self.generator.get_state()
                pending = self._repair(self.method.search.ask(self.state, self.generator, self.sample))
                images = self.render(pending)
                self._write_images(images)
                self.pending = pending.flatten(1)
                try:
                    self._save()
                except BaseException:
                    self.generator.set_state(draw_state)
                    self.pending = None
                    raise
                return images
            images = self.render(self.pending.view(-1, *self.shape))
            if not (self.folder() / "images.csv").is_file():
                self._write_images(images)
            return images

    def tell(self, responses: Any) -> None:
        """One response per image of the generation asked, in its order; a bad list is refused and
        changes nothing."""
        with self._locked():
            if self.pending is None:
                raise ConfigError("tell() before ask(); expected the responses to the images ask() returned")
            values = torch.as_tensor(responses, dtype=torch.float32).flatten().cpu()
            expected = self.runs * self.size
            if len(values) != expected:
                raise ConfigError(f"{len(values)} responses for generation {self.generation}; expected {expected}, one "
                                  "per image ask() returned")
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).nonzero()[0])
                raise ConfigError(f"response {bad} of generation {self.generation} is {float(values[bad])}; expected "
                                  "finite numbers")
            responses_file = self.folder() / "responses.csv"
            if not responses_file.is_file():  # the record of what was told
                save_text("image,response\n" + "".join(f"{n},{float(v)!r}\n" for n, v in
                                                       zip(self.image_names(), values)), responses_file)
            candidates = self.pending.view(self.runs, self.size, self.dim)
            values = values.view(self.runs, self.size)
            self.method.search.tell(self.state, candidates, values, self.generator)
            self.best_value, self.best_z, _ = best_kept(self.best_value, self.best_z, candidates, values)
            self.history.append(self.best_value.tolist())
            self.generation, self.pending = self.generation + 1, None
            self._save()

    def render(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.space(z.reshape(-1, *self.shape)).clamp(0, 1).cpu()

    def best(self) -> torch.Tensor:
        """Each run's best-responding image so far (runs, 3, S, S), unit-major."""
        return self.render(self.best_z)

    def summary(self) -> dict[str, Any]:
        rows = [{"unit": self.units[r // self.seeds], "seed": r % self.seeds,
                 "best_response": float(self.best_value[r]) if math.isfinite(self.best_value[r]) else None}
                for r in range(self.runs)]
        return {"method": self.method.name, "generation": self.generation, "population": self.size,
                "evaluations": self.generation * self.size, "pending": self.pending is not None,
                "results": rows, "best_so_far": [list(run) for run in zip(*self.history)]}

    def report(self) -> Path:
        """best.png (a row per unit, a column per seed) and session.json beside the state."""
        import json

        from featvis.reports.grids import labelled_grid

        if self.history:
            grid = labelled_grid(self.best(), len(self.units), self.units, [f"seed {k}" for k in range(self.seeds)])
            save_png(grid, self.output_dir / "best.png")
        return save_text(json.dumps(self.summary(), indent=1), self.output_dir / "session.json")

    # -- on disk --------------------------------------------------------------------------------

    def _repair(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return repaired(x, self.shape, self.method.operators, self.generation)

    def _write_images(self, images: torch.Tensor) -> None:
        folder = self.folder()
        for name, image in zip(self.image_names(), images):
            save_png(image, folder / name)
        rows = "".join(f"{name},{self.units[k // self.size // self.seeds]},{k // self.size % self.seeds}\n"
                       for k, name in enumerate(self.image_names()))
        save_text("image,unit,seed\n" + rows, folder / "images.csv")  # written last: the folder is complete

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time asks or tells in a folder (the OS drops the lock of a killed one)."""
        lock = FileLock(self.output_dir / ".session.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"closed_loop.dir={self.output_dir} is in use by another process; expected one "
                              "session per folder at a time") from None
        try:
            yield
        finally:
            lock.release()

    def _save(self) -> None:
        buffer = io.BytesIO()
        torch.save({"format": STATE_FORMAT, "identity": self.identity, "generation": self.generation,
                    "state": self.state, "rng": self.generator.get_state(), "pending": self.pending,
                    "best_value": self.best_value, "best_z": self.best_z, "history": self.history}, buffer)
        save_bytes(buffer.getbuffer(), self.path)

    def _load(self) -> None:
        try:
            saved = read_checkpoint(self.path)
        except CheckpointError as err:
            raise ConfigError(f"closed_loop.dir: {err}") from None
        if saved.get("format") != STATE_FORMAT or "identity" not in saved:
            raise ConfigError(f"{self.path} is not a featvis session (format {saved.get('format')!r}); expected "
                              f"one written by Session (format {STATE_FORMAT})")
        if saved["identity"] != self.identity:
            theirs = {k: v for k, v in saved["identity"].items() if self.identity.get(k) != v}
            raise ConfigError(f"{self.path} is a session of other settings ({theirs}); expected the same method, "
                              "units, seeds and search as when it began, or another folder")
        self.generator = torch.Generator(device="cpu")
        self.generator.set_state(saved["rng"])
        self.state, self.generation, self.pending = saved["state"], int(saved["generation"]), saved["pending"]
        self.best_value, self.best_z, self.history = saved["best_value"], saved["best_z"], saved["history"]

