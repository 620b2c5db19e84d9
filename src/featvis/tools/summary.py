"""A multirun dir as a table and a contact sheet: `python -m featvis.tools.summary <multirun dir>`.

Every job of a Hydra sweep (`visualize.py -m ...`, `train.py -m ...`, an Optuna search) has its
own dir with `.hydra/overrides.yaml` and, once complete, `metrics.json`.  This writes, in the
multirun dir:

- `summary.csv` and `summary.md`: one row per job, sorted by the sweep's objective (what the job
  returned to Hydra: `sweep.objective` of visualize.py, `task.monitor` of train.py), best first,
  with the swept values and the figures of each job; incomplete jobs last;
- `contact_sheet.png`: one row per job in the same order, each the job's `grid.png` (visualize.py),
  newest generator samples or feature-evolution strip (train.py), labelled with its rank, values
  and objective.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from featvis.errors import ConfigError, FeatvisError


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def job_dirs(sweep: Path) -> list[Path]:
    """The jobs of a multirun dir: folders (at any depth) with a `.hydra/overrides.yaml`."""
    return sorted((p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml")),
                  key=lambda p: (len(p.relative_to(sweep).parts), _job_number(p), str(p)))


def _job_number(job: Path) -> int:
    hydra = _read_yaml(job / ".hydra" / "hydra.yaml") or {}
    num = hydra.get("hydra", {}).get("job", {}).get("num")
    return int(num) if isinstance(num, int) else 10**9


def read_job(job: Path) -> dict[str, Any]:
    """One row: overrides, objective (name, value, direction), figures, and the image to show."""
    overrides = [str(o) for o in _read_yaml(job / ".hydra" / "overrides.yaml") or []]
    config = _read_yaml(job / ".hydra" / "config.yaml") or {}
    row: dict[str, Any] = {"job": job, "overrides": dict(_split(o) for o in overrides), "complete": False,
                           "objective": None, "objective_name": "objective", "direction": "maximize",
                           "figures": {}, "image": None}
    metrics_file = job / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    if metrics is None:
        return row
    row["complete"] = True
    if "results" in metrics:  # visualize.py
        sweep = metrics.get("sweep") or {}
        terms = sweep.get("terms") or []
        row.update(objective=sweep.get("objective"), objective_name=" x ".join(terms) or "objective",
                   direction=(config.get("sweep") or {}).get("direction", "maximize"),
                   figures=dict(sweep.get("figures") or {}))
        row["image"] = job / "grid.png" if (job / "grid.png").is_file() else None
    else:  # train.py
        row.update(objective=metrics.get("value"), objective_name=metrics.get("monitor") or "value",
                   direction="minimize" if metrics.get("monitor_mode") == "min" else "maximize",
                   figures={k: v for k, v in (metrics.get("metrics") or {}).items() if k.startswith("val/")})
        row["image"] = _train_image(job)
    return row


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _train_image(job: Path) -> Path | None:
    samples = sorted((job / "samples").glob("step*.png")) if (job / "samples").is_dir() else []
    if samples:
        return samples[-1]
    strip = job / "evolution" / "strip.png"
    return strip if strip.is_file() else None


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best objective first (by each job's direction), jobs without a value last, ties by job."""
    def key(row: dict[str, Any]) -> tuple:
        value = row["objective"]
        if value is None:
            return (1, 0.0, _job_number(row["job"]))
        return (0, -value if row["direction"] == "maximize" else value, _job_number(row["job"]))

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: list[dict[str, Any]], sweep: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """Header and cells: rank, job, the swept values (those that differ between jobs), objective, figures."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    swept = [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]
    figures: list[str] = []
    for row in rows:
        figures += [k for k in row["figures"] if k not in figures]
    names = {row["objective_name"] for row in rows if row["complete"]}
    objective = names.pop() if len(names) == 1 else "objective"
    header = ["rank", "job", *swept, objective, *[f for f in figures if f != objective], "status"]
    cells = []
    for rank, row in enumerate(rows, 1):
        cells.append([str(rank), str(row["job"].relative_to(sweep)), *[row["overrides"].get(k, "") for k in swept],
                      _fmt(row["objective"]), *[_fmt(row["figures"].get(f)) for f in figures if f != objective],
                      "complete" if row["complete"] else "incomplete"])
    return header, cells, swept


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def contact_sheet(rows: list[dict[str, Any]], labels: list[str], max_width: int = 1200):
    """One row per job: its image (all at the widest one's width, at most `max_width`), its label on
    the left; None if no job has an image."""
    import torch
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.transforms.functional import pil_to_tensor
    from torchvision.utils import make_grid

    shown = [(row, label) for row, label in zip(rows, labels) if row["image"] is not None]
    if not shown:
        return None
    font = ImageFont.load_default()
    width = min(max_width, max(Image.open(row["image"]).width for row, _ in shown))
    label_width = 12 + 7 * max(len(line) for _, label in shown for line in label.split("\n"))
    panels = []
    for row, label in shown:
        image = Image.open(row["image"]).convert("RGB")
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.BILINEAR)
        panel = Image.new("RGB", (label_width + width, max(image.height, 14 * (label.count("\n") + 2))), "white")
        panel.paste(image, (label_width, 0))
        ImageDraw.Draw(panel).multiline_text((6, 6), label, fill="black", font=font, spacing=4)
        panels.append(panel)
    height = max(p.height for p in panels)
    tensors = []
    for panel in panels:
        padded = Image.new("RGB", (panel.width, height), "white")
        padded.paste(panel, (0, 0))
        tensors.append(pil_to_tensor(padded))
    grid = make_grid(torch.stack(tensors), nrow=1, padding=4, pad_value=128)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def summarize(sweep: str | Path) -> dict[str, Any]:
    """Write summary.csv, summary.md and contact_sheet.png into `sweep`; returns the sorted rows and paths."""
    root = Path(sweep).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; expected a multirun dir (hydra.sweep.dir)")
    jobs = job_dirs(root)
    if not jobs:
        raise ConfigError(f"{root} holds no Hydra jobs (no */.hydra/overrides.yaml); expected a multirun dir")
    rows = sort_rows([read_job(job) for job in jobs])
    header, cells, swept = table(rows, root)
    with open(root / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *cells])
    (root / "summary.md").write_text(markdown(header, cells))
    labels = []
    for rank, (row, cell) in enumerate(zip(rows, cells), 1):
        values = [f"{k}={row['overrides'].get(k, '')}" for k in swept]
        objective = f"{row['objective_name']} = {_fmt(row['objective'])}" if row["complete"] else "incomplete"
        labels.append("\n".join([f"#{rank}  job {cell[1]}", *values, objective]))
    sheet = contact_sheet(rows, labels)
    sheet_path = None
    if sheet is not None:
        sheet_path = root / "contact_sheet.png"
        sheet.save(sheet_path)
    return {"rows": rows, "header": header, "cells": cells, "csv": root / "summary.csv",
            "markdown": root / "summary.md", "contact_sheet": sheet_path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featvis.tools.summary", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a multirun dir (hydra.sweep.dir), e.g. multirun/visualize/<time>")
    args = parser.parse_args(argv)
    try:
        result = summarize(args.sweep_dir)
    except FeatvisError as err:
        print(f"featvis: error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"].read_text(), end="")
    print(f"\n{result['csv']}\n{result['markdown']}\n{result['contact_sheet'] or '(no images: no contact sheet)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
