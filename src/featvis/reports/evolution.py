"""What a feature-evolution folder shows: built from `evolution.json` and the frames it names.

    strip.png          rows = units, columns = recorded steps (seed 0)
    videos/<unit>.gif  one animation per unit over training (its seeds side by side)
    change.svg         mean frame-to-frame pixel change per layer over training
    index.html         everything above, a step slider over grids/, and a table of the units

Everything is rebuilt from the files, so the reports always agree with evolution.json;
`summarize` adds the per-layer change figures to it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from featvis.io import save_gif, save_png, save_text
from featvis.reports.grids import labelled_grid

SETTLED = 0.25   # a layer has settled once its change stays below this fraction of its peak
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def step_name(step: int) -> str:
    """The name of a step's frame folder and grid: "step0000123"."""
    return f"step{step:07d}"


def grid_file(step: int) -> str:
    return f"grids/{step_name(step)}.png"


def _load(root: Path, file: str) -> torch.Tensor:
    with Image.open(root / file) as image:
        return pil_to_tensor(image.convert("RGB")).float() / 255


def frames_by_unit(doc: dict[str, Any], root: Path) -> dict[str, dict[int, dict[int, torch.Tensor]]]:
    """{unit label: {seed: {step: image}}} for every frame in the document."""
    table: dict[str, dict[int, dict[int, torch.Tensor]]] = {}
    for frame in doc["frames"]:
        table.setdefault(frame["unit"], {}).setdefault(frame["seed"], {})[frame["step"]] = _load(root, frame["file"])
    return table


def layer_change(doc: dict[str, Any], images: dict[str, dict[int, dict[int, torch.Tensor]]]) -> dict[str, Any]:
    """Per layer: the mean |frame_t - frame_t-1| over its units and seeds at each recorded step t,
    and the step after which the change stays below SETTLED x its peak (None: too few frames)."""
    steps = doc["steps"]
    layers: dict[str, Any] = {}
    for layer in dict.fromkeys(u["layer"] for u in doc["units"]):
        labels = [u["label"] for u in doc["units"] if u["layer"] == layer]
        series = []
        for before, after in zip(steps, steps[1:]):
            diffs = [(by_step[after] - by_step[before]).abs().mean()
                     for label in labels for by_step in images.get(label, {}).values()
                     if before in by_step and after in by_step]
            series.append(float(torch.stack(diffs).mean()) if diffs else 0.0)
        settle = None
        if len(series) >= 2 and max(series) > 0:
            peak = max(series)
            settle = steps[-1]
            for i in range(len(series) - 1, -1, -1):
                if series[i] > SETTLED * peak:
                    break
                settle = steps[i]
        layers[layer] = {"steps": steps[1:], "change": series, "settle_step": settle}
    return layers


def lower_layers_settle_first(layers: dict[str, Any]) -> bool | None:
    """The survey's observation, checked: do settle steps grow with depth (layers in listed order)?"""
    settles = [v["settle_step"] for v in layers.values()]
    if len(settles) < 2 or any(s is None for s in settles):
        return None
    return all(a <= b for a, b in zip(settles, settles[1:]))


def write_strip(doc: dict[str, Any], images: dict, root: Path) -> Path:
    steps, units = doc["steps"], doc["units"]
    tiles = [images[u["label"]][0][s] for u in units for s in steps]
    scale = 2 if len(steps) <= 8 else 1
    strip = labelled_grid(torch.stack(tiles), len(units), [u["label"] for u in units],
                          [f"step {s}" for s in steps], scale=scale)
    return save_png(strip, root / "strip.png")


def _captioned(images: list[torch.Tensor], caption: str) -> torch.Tensor:
    body = to_pil_image(make_grid(torch.stack(images).clamp(0, 1), nrow=len(images), padding=2, pad_value=1.0))
    canvas = Image.new("RGB", (body.width, body.height + 14), "white")
    canvas.paste(body, (0, 14))
    ImageDraw.Draw(canvas).text((3, 1), caption, fill="black", font=ImageFont.load_default())
    return pil_to_tensor(canvas).float() / 255


def write_videos(doc: dict[str, Any], images: dict, root: Path) -> dict[str, Path]:
    """One GIF per unit: its seeds side by side, one frame per recorded step, captioned."""
    videos = {}
    for unit in doc["units"]:
        by_seed = images[unit["label"]]
        frames = [_captioned([by_seed[k][s] for k in sorted(by_seed)], f"step {s}") for s in doc["steps"]]
        videos[unit["label"]] = save_gif(frames, root / "videos" / f"{unit['slug']}.gif", duration_ms=400)
    return videos


def change_svg(layers: dict[str, Any], width: int = 640, height: int = 320) -> str:
    """A line chart of frame-to-frame change per layer (log step axis when steps span decades)."""
    import math

    left, right, top, bottom = 60, 120, 20, 40
    points = [(s, c) for v in layers.values() for s, c in zip(v["steps"], v["change"])]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>']
    if not points:
        parts.append(f'<text x="{left}" y="{height / 2}">needs two recorded steps</text></svg>')
        return "".join(parts)
    lo, hi = min(max(s, 1) for s, _ in points), max(max(s, 1) for s, _ in points)
    log_x = hi / lo > 20
    fx = (lambda s: math.log10(max(s, 1))) if log_x else float
    x0, x1 = fx(lo), fx(hi) if fx(hi) > fx(lo) else fx(lo) + 1
    y1 = max(c for _, c in points) * 1.1 or 1.0

    def xy(step: float, change: float) -> tuple[float, float]:
        x = left + (fx(step) - x0) / (x1 - x0) * (width - left - right)
        return x, top + (1 - change / y1) * (height - top - bottom)

    plot_bottom, plot_right = height - bottom, width - right
    parts.append(f'<line x1="{left}" y1="{plot_bottom}" x2="{plot_right}" y2="{plot_bottom}" stroke="black"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{plot_bottom}" stroke="black"/>')
    for i in range(5):  # y ticks
        value = y1 * i / 4
        _, y = xy(lo, value)
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{value:.3f}</text>')
    ticks = [10 ** e for e in range(int(math.floor(x0)), int(math.ceil(x1)) + 1)] if log_x else \
        [lo + (hi - lo) * i / 4 for i in range(5)]
    for tick in ticks:
        if lo <= tick <= hi:
            x, _ = xy(tick, 0)
            parts.append(f'<text x="{x}" y="{plot_bottom + 14}" text-anchor="middle">{int(tick)}</text>')
    parts.append(f'<text x="{(left + plot_right) / 2}" y="{height - 6}" text-anchor="middle">'
                 f'training step{" (log)" if log_x else ""}</text>'
                 f'<text x="12" y="{top + (plot_bottom - top) / 2}" transform="rotate(-90 12 '
                 f'{top + (plot_bottom - top) / 2})" text-anchor="middle">mean |frame change|</text>')
    for i, (layer, values) in enumerate(layers.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, c) for s, c in zip(values["steps"], values["change"])))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        parts.append(f'<rect x="{plot_right + 12}" y="{top + 16 * i}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{plot_right + 30}" y="{top + 16 * i + 5}">{html.escape(layer)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def index_html(doc: dict[str, Any], layers: dict[str, Any], title: str = "Feature evolution") -> str:
    steps = doc["steps"]
    first, last = (steps[0], steps[-1]) if steps else (None, None)
    rows = []
    for unit in doc["units"]:
        at = {f["step"]: f for f in doc["frames"] if f["unit"] == unit["label"] and f["seed"] == 0}
        judge = [f.get("judge_correct") for f in doc["frames"] if f["unit"] == unit["label"] and f["step"] == last]
        judged = (f"{sum(bool(j) for j in judge)}/{len(judge)}" if judge and judge[0] is not None else "")
        rows.append(
            f"<tr><td>{html.escape(unit['label'])}</td><td>{html.escape(unit['layer'])}</td>"
            f"<td><img class=video src=\"videos/{html.escape(unit['slug'])}.gif\" alt=\"{html.escape(unit['label'])}\"></td>"
            f"<td>{at[first]['activation']:.2f}</td><td>{at[last]['activation']:.2f}</td>"
            f"<td>{at[last]['probability']:.3f}</td><td>{judged}</td></tr>")
    settle = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['settle_step']}</td></tr>" for k, v in layers.items())
    verdict = lower_layers_settle_first(layers)
    verdict_text = {None: "not enough frames yet to tell", True: "yes, on this run",
                    False: "no, not on this run"}[verdict]
    grids = json.dumps([grid_file(s) for s in steps])
    blank = blank_tile_fraction(doc)
    blank_text = ("" if blank is None else f"Blank tiles after step 0 (the start image, untouched: no "
                  f"gradient reached the unit): <b id=\"blank\">{blank:.0%}</b>.")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
img {{ image-rendering: pixelated; }} img.video {{ height: 80px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.strip {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Method <b>{html.escape(str(doc.get('method')))}</b>, {len(doc['units'])} units x {doc['seeds']} seeds,
{len(steps)} recorded steps ({first} to {last}). Initial codes and noise are fixed, so what changes from
frame to frame is the network. Data: <a href="evolution.json">evolution.json</a>.</p>
<h2>Units over training</h2>
<p>Rows are units, columns the recorded steps (seed 0). {blank_text}</p>
<img class="strip" src="strip.png" alt="strip of units over training">
<h2>Step by step</h2>
<input id="step" type="range" min="0" max="{max(len(steps) - 1, 0)}" value="{max(len(steps) - 1, 0)}">
<span id="step-label"></span><br><img id="grid" alt="grid at the chosen step">
<h2>How fast each layer settles</h2>
<img src="change.svg" alt="frame-to-frame change per layer">
<p>Settle step: the step after which a layer's frame-to-frame change stays below {SETTLED:.0%} of its
peak. Do lower layers settle first? <b id="verdict">{verdict_text}</b>.</p>
<table><tr><th>layer</th><th>settle step</th></tr>{settle}</table>
<h2>Units</h2>
<table><tr><th>unit</th><th>layer</th><th>evolution</th><th>activation at step {first}</th>
<th>activation at step {last}</th><th>probability at step {last}</th><th>judge agrees (last step)</th></tr>
{''.join(rows)}</table>
<script>
const grids = {grids};
const slider = document.getElementById("step");
function show() {{
  const i = Number(slider.value);
  if (!grids.length) return;
  document.getElementById("grid").src = grids[i];
  document.getElementById("step-label").textContent = "step " + grids[i].match(/step0*(\\d+)/)[1];
}}
slider.addEventListener("input", show);
show();
</script>
</body></html>
"""


def build_reports(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Rebuild every report of the folder from `doc` (the content of evolution.json)."""
    root = Path(root)
    if not doc["frames"]:
        return {"layers": {}}
    images = frames_by_unit(doc, root)
    layers = layer_change(doc, images)
    write_strip(doc, images, root)
    write_videos(doc, images, root)
    save_text(change_svg(layers), root / "change.svg")
    save_text(index_html(doc, layers), root / "index.html")
    return {"layers": layers, "lower_layers_settle_first": lower_layers_settle_first(layers),
            "blank_tile_fraction": blank_tile_fraction(doc)}


def blank_tile_fraction(doc: dict[str, Any]) -> float | None:
    """The fraction of tiles after step 0 that show their start image (or one flat colour)."""
    flags = [f["blank"] for f in doc["frames"] if f["step"] > 0 and "blank" in f]
    return sum(flags) / len(flags) if flags else None
