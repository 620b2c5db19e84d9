"""What a feature-evolution folder shows: built from `evolution.json` and the frames it names.

    strip.png          rows = units, columns = recorded steps (seed 0)
    videos/<unit>.gif  one animation per unit over training (its seeds side by side)
    settling.svg       per layer, how far its frames are from their final form over training
    index.html         everything above, a step slider over grids/, per layer the units at each
                       step beside their top-k real images, and a table of the units

Everything is rebuilt from the files, so the reports always agree with evolution.json;
`build_reports` returns the per-layer settling figures and the differences (`differences`: how far
apart a layer's units' syntheses are at the last step, and how much each unit's changes from the
first step to the last, in grey-level RMS; for units affine in the image, how well the last
step's syntheses show the unit's filter), which go into it too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from featvis.io import save_gif, save_png, save_text
from featvis.reports.grids import labelled_grid

# A layer has settled once its frames stay within this fraction of their largest distance to their
# final form.
SETTLED = 0.25
FILTER_KEYS = ("filter_match", "filter_match_other")
UNMOVED = 1e-4    # a largest distance below this is rounding noise: the frames did not change
BOOTSTRAP = 1000  # resamples of a layer's (unit, seed) curves behind its settle step's interval
Embed = Callable[[torch.Tensor], torch.Tensor]
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


def distances_to_final(doc: dict[str, Any], images: dict, embed: Embed | None = None) -> dict[str, torch.Tensor]:
    """Per unit, (seeds, steps): 1 - the cosine similarity of each frame's features to the unit's last
    frame's, with `embed` (images -> features; e.g. a judge's fc7) or, without one, centred pixels."""
    steps, labels = doc["steps"], [u["label"] for u in doc["units"]]
    stack = torch.stack([images[label][k][s] for label in labels for k in sorted(images[label]) for s in steps])
    flat = stack.flatten(1)
    features = (embed(stack) if embed is not None else flat - flat.mean(1, keepdim=True)).flatten(1)
    out, start = {}, 0
    for label in labels:  # one embedding call for every frame, then each unit's (seeds, steps) block
        seeds = len(images[label])
        block = features[start:start + seeds * len(steps)].reshape(seeds, len(steps), -1)
        start += seeds * len(steps)
        distance = (1 - torch.nn.functional.cosine_similarity(block, block[:, -1:], dim=-1)).clamp(min=0)
        distance[:, -1] = 0  # the last frame is the reference: exactly 0, not rounding noise
        out[label] = distance
    return out


def settle_step(curve: torch.Tensor, steps: list[int]) -> int | None:
    """The first recorded step from which `curve` (distance to the final frame) stays at or below
    SETTLED x its largest value (the last step: not settled before it); None with fewer than 3
    frames or frames that never changed."""
    if len(steps) < 3 or float(curve.max()) <= UNMOVED:
        return None
    above = (curve > SETTLED * curve.max()).nonzero()
    return steps[int(above.max()) + 1] if len(above) else steps[0]


def settling(doc: dict[str, Any], images: dict, embed: Embed | None = None) -> dict[str, Any]:
    """Per layer: its mean distance to the final frame at each step, its settle step, and an 80%
    bootstrap interval of that step over the layer's (unit, seed) curves.  Also how often, over the
    resamples, the settle steps grow with depth (layers in the order their units are listed)."""
    steps = doc["steps"]
    distances = distances_to_final(doc, images, embed) if steps else {}
    generator = torch.Generator(device="cpu").manual_seed(0)
    layers, resampled = {}, []
    for layer in dict.fromkeys(u["layer"] for u in doc["units"]):
        curves = torch.cat([distances[u["label"]] for u in doc["units"] if u["layer"] == layer])
        mean = curves.mean(0)
        picks = torch.randint(len(curves), (BOOTSTRAP, len(curves)), generator=generator, device="cpu")
        replicates = [settle_step(c, steps) for c in curves[picks].mean(1)]
        known = sorted(r for r in replicates if r is not None)
        interval = [known[int(0.1 * (len(known) - 1))], known[int(0.9 * (len(known) - 1))]] if known else None
        layers[layer] = {"steps": steps, "distance": [round(float(d), 5) for d in mean],
                         "settle_step": settle_step(mean, steps), "settle_interval": interval, "curves": len(curves)}
        resampled.append(replicates)
    ordered = [in_depth_order(list(r), steps) is True for r in zip(*resampled)]
    confidence = sum(ordered) / len(ordered) if len(layers) >= 2 and ordered else None
    return {"layers": layers, "lower_layers_settle_first": lower_layers_settle_first(layers),
            "lower_layers_settle_first_confidence": confidence}


def lower_layers_settle_first(layers: dict[str, Any]) -> bool | None:
    """The survey's observation, checked: do settle steps grow with depth (layers in listed order)?"""
    values = list(layers.values())
    return in_depth_order([v["settle_step"] for v in values], values[0]["steps"] if values else [])


def in_depth_order(settles: list[int | None], steps: list[int]) -> bool | None:
    """Whether settle steps never fall with depth; a layer not settled before the last step counts as
    settling after every settled one.  None when it cannot be told: fewer than two layers, too few
    frames, or no layer settled before the last step."""
    if len(settles) < 2 or any(s is None for s in settles) or all(s == steps[-1] for s in settles):
        return None
    return all(a <= b for a, b in zip(settles, settles[1:]))


def grey_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """The root mean square difference of two (3, H, W) images' grey levels (the mean of their
    channels), in [0, 1]."""
    return float((a.float().mean(0) - b.float().mean(0)).square().mean().sqrt())


def differences(doc: dict[str, Any], images: dict) -> dict[str, Any]:
    """How distinct a layer's units' syntheses are and how much they move over training (grey RMS).

    Per unit: `difference`, its mean grey RMS to each other unit of its layer at the last step (the
    same seed's images; averaged over the seeds), and `change`, the grey RMS between its first and
    its last frame (averaged over the seeds).  Per layer: `unit_difference`, the mean over every pair
    of its units (None for a layer of one unit), and `change`, the mean over its units.  Where the
    frames carry them (units affine in the image: featvis.synthesis.filters), `filter_match` and
    `filter_match_other` at the last step, averaged over the seeds, and per layer over its units."""
    steps = doc["steps"]
    if not steps:
        return {"units": {}, "layers": {}}
    first, last = steps[0], steps[-1]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    units, layers = {}, {}
    for layer in dict.fromkeys(u["layer"] for u in doc["units"]):
        labels = [u["label"] for u in doc["units"] if u["layer"] == layer]
        pairs: dict[tuple[str, str], float] = {}
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                seeds = sorted(set(images[a]) & set(images[b]))
                distance = mean([grey_rms(images[a][k][last], images[b][k][last]) for k in seeds])
                if distance is not None:
                    pairs[a, b] = pairs[b, a] = distance
        for label in labels:
            by_seed = images[label]
            units[label] = {"layer": layer,
                            "difference": mean([pairs[label, b] for b in labels if (label, b) in pairs]),
                            "change": mean([grey_rms(by_seed[k][first], by_seed[k][last]) for k in sorted(by_seed)])}
            for key in FILTER_KEYS:  # units affine in the image (featvis.synthesis.filters)
                found = [f[key] for f in doc["frames"] if f["unit"] == label and f["step"] == last
                         and f.get(key) is not None]
                if found:
                    units[label][key] = mean(found)
        layers[layer] = {"unit_difference": mean(list(pairs.values())),  # each pair twice: the same mean
                         "change": mean([units[label]["change"] for label in labels if units[label]["change"] is not None])}
        for key in FILTER_KEYS:
            found = [units[label][key] for label in labels if key in units[label]]
            if found:
                layers[layer][key] = mean(found)
    return {"units": units, "layers": layers}


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


def settling_svg(layers: dict[str, Any], space: str, width: int = 640, height: int = 320) -> str:
    """A line chart of each layer's distance to its final frames (log step axis when steps span
    decades; step 0 is drawn at 1)."""
    import math

    left, right, top, bottom = 60, 120, 20, 40
    points = [(s, c) for v in layers.values() for s, c in zip(v["steps"], v["distance"])]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>']
    if not points:
        parts.append(f'<text x="{left}" y="{height / 2}">needs recorded steps</text></svg>')
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
                 f'{top + (plot_bottom - top) / 2})" text-anchor="middle">distance to final frame '
                 f'({html.escape(space)})</text>')
    for i, (layer, values) in enumerate(layers.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = (xy(s, c) for s, c in zip(values["steps"], values["distance"]))
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        parts.append(f'<rect x="{plot_right + 12}" y="{top + 16 * i}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{plot_right + 30}" y="{top + 16 * i + 5}">{html.escape(layer)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def layer_sections(doc: dict[str, Any]) -> str:
    """Per layer, a table: its units (rows) at each recorded step (columns), each synthesis (seed 0)
    above the real images that activate the unit most at that step (when recorded)."""
    steps = doc["steps"]
    head = "".join(f"<th>step {s}</th>" for s in steps)
    sections = []
    for layer in dict.fromkeys(u["layer"] for u in doc["units"]):
        rows = []
        for unit in (u for u in doc["units"] if u["layer"] == layer):
            at = {f["step"]: f for f in doc["frames"] if f["unit"] == unit["label"] and f["seed"] == 0}
            cells = "".join(
                f"<td><img class=tile src=\"{html.escape(at[s]['file'])}\" alt=\"synthesis\">"
                + (f"<br><img class=tile src=\"{html.escape(at[s]['top_file'])}\" alt=\"top real images\">"
                   if "top_file" in at[s] else "") + "</td>" for s in steps if s in at)
            rows.append(f"<tr><th>{html.escape(unit['label'])}</th>{cells}</tr>")
        sections.append(f"<h3>{html.escape(layer)}</h3><table><tr><th>unit</th>{head}</tr>{''.join(rows)}</table>")
    return "".join(sections)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _filter_text(figures: dict[str, Any]) -> str:
    """"own / others" for a layer affine in the image, "-" for any other."""
    if figures.get("filter_match") is None:
        return "-"
    return f"{_figure(figures['filter_match'])} / {_figure(figures.get('filter_match_other'))}"


def settle_text(step: int | None, steps: list[int]) -> str:
    return "-" if step is None else "not before the last frame" if step == steps[-1] else str(step)


def index_html(doc: dict[str, Any], summary: dict[str, Any], title: str = "Feature evolution") -> str:
    steps, layers = doc["steps"], summary["layers"]
    first, last = (steps[0], steps[-1]) if steps else (None, None)
    figures = summary.get("differences") or {"units": {}, "layers": {}}
    rows = []
    for unit in doc["units"]:
        at = {f["step"]: f for f in doc["frames"] if f["unit"] == unit["label"] and f["seed"] == 0}
        judge = [f.get("judge_correct") for f in doc["frames"] if f["unit"] == unit["label"] and f["step"] == last]
        judged = (f"{sum(bool(j) for j in judge)}/{len(judge)}" if judge and judge[0] is not None else "")
        own = figures["units"].get(unit["label"], {})
        read = ", ".join(t["at"] for t in unit.get("terms", []) if t.get("at"))
        rows.append(
            f"<tr><td>{html.escape(unit['label'])}</td><td>{html.escape(unit['layer'])}</td>"
            f"<td>{html.escape(read) or '-'}</td>"
            f"<td><img class=video src=\"videos/{html.escape(unit['slug'])}.gif\" alt=\"{html.escape(unit['label'])}\"></td>"
            f"<td>{at[first]['activation']:.2f}</td><td>{at[last]['activation']:.2f}</td>"
            f"<td>{at[last]['probability']:.3f}</td><td>{judged}</td>"
            f"<td>{_figure(own.get('difference'))}</td><td>{_figure(own.get('change'))}</td></tr>")
    settle = "".join(f"<tr><td>{html.escape(k)}</td><td>{settle_text(v['settle_step'], steps)}</td>"
                     f"<td>{' to '.join(map(str, v['settle_interval'] or ['-']))}</td><td>{v['curves']}</td></tr>"
                     for k, v in layers.items())
    verdict = summary["lower_layers_settle_first"]
    confidence = summary["lower_layers_settle_first_confidence"]
    verdict_text = {None: "cannot tell (too few frames, or no layer settled before the last one)",
                    True: "yes, on this run",
                    False: "no, not on this run"}[verdict]
    if confidence is not None:
        verdict_text += f" (in {confidence:.0%} of {BOOTSTRAP} resamples of the units and seeds)"
    apart = "".join(f"<tr><td>{html.escape(layer)}</td><td>{sum(u['layer'] == layer for u in doc['units'])}</td>"
                    f"<td class=unit-difference>{_figure(v['unit_difference'])}</td>"
                    f"<td class=change>{_figure(v['change'])}</td>"
                    f"<td class=filter-match>{_filter_text(v)}</td></tr>"
                    for layer, v in figures["layers"].items())
    grids = json.dumps([grid_file(s) for s in steps])
    blank = blank_tile_fraction(doc)
    blank_text = ("" if blank is None else f"Blank tiles after step 0 (the start image, untouched: no "
                  f"gradient reached the unit): <b id=\"blank\">{blank:.0%}</b>.")
    top_text = (f"Under each synthesis, the {doc['top_k']} validation images that activate the unit most at "
                "that step (of a fixed pool)." if doc.get("top_k") else "")
    space = html.escape(summary["settle_space"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
img {{ image-rendering: pixelated; }} img.video {{ height: 80px; }} img.tile {{ width: 64px; }}
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
<img src="settling.svg" alt="distance to the final frame per layer">
<p>Distance: 1 - the cosine similarity of a frame's features ({space}) to those of the unit's last frame,
averaged over the layer's units and seeds. Settle step: the first recorded step from which that distance
stays within {SETTLED:.0%} of its largest value; the interval is the 10th to 90th percentile of the settle
step over {BOOTSTRAP} resamples of the layer's units and seeds. Do lower layers settle first?
<b id="verdict">{verdict_text}</b>.</p>
<table><tr><th>layer</th><th>settle step</th><th>80% interval</th><th>units x seeds</th></tr>{settle}</table>
<h2>How distinct the units are, and how much they change</h2>
<p>Grey-level RMS (images in [0, 1], the mean of their channels): between two units of a layer at step {last}
(the same seed; the mean over every pair of the layer's units and the seeds), and between a unit's frames at
step {first} and step {last} (the mean over the layer's units and seeds). Units that show nothing of their own
(a colour wash every unit of the layer draws alike) are close to each other and barely change.
For a layer affine in the image (a first conv layer read before its ReLU), a unit's preferred image is its
filter: the correlation, at step {last}, between the patch its centre unit sees and its own filter / the
other units' filters of the layer (the mean over units and seeds). A synthesis that shows its filter
matches its own far better than the others.</p>
<table id="differences"><tr><th>layer</th><th>units</th><th>difference between units (step {last})</th>
<th>change, step {first} to {last}</th><th>filter match: own / others (step {last})</th></tr>{apart}</table>
<h2>Layer by layer</h2>
<p>{top_text}</p>
{layer_sections(doc)}
<h2>Units</h2>
<table><tr><th>unit</th><th>layer</th><th>read at</th><th>evolution</th><th>activation at step {first}</th>
<th>activation at step {last}</th><th>probability at step {last}</th><th>judge agrees (last step)</th>
<th>difference from its layer's other units (step {last})</th><th>change, step {first} to {last}</th></tr>
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


def build_reports(root: Path, doc: dict[str, Any], embed: Embed | None = None, space: str = "pixels") -> dict[str, Any]:
    """Rebuild every report of the folder from `doc` (the content of evolution.json); returns the
    settling figures (distances in `space`: `embed`'s features, or pixels without one)."""
    root = Path(root)
    if not doc["frames"]:
        return {"layers": {}}
    images = frames_by_unit(doc, root)
    summary = {**settling(doc, images, embed), "settle_space": space, "blank_tile_fraction": blank_tile_fraction(doc),
               "differences": differences(doc, images)}
    for layer, figures in summary["differences"]["layers"].items():
        summary["layers"][layer].update(figures)
    write_strip(doc, images, root)
    write_videos(doc, images, root)
    save_text(settling_svg(summary["layers"], space), root / "settling.svg")
    save_text(index_html(doc, summary), root / "index.html")
    return summary


def blank_tile_fraction(doc: dict[str, Any]) -> float | None:
    """The fraction of tiles after step 0 that show their start image (or one flat colour)."""
    flags = [f["blank"] for f in doc["frames"] if f["step"] > 0 and "blank" in f]
    return sum(flags) / len(flags) if flags else None
