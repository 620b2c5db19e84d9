"""A feature-evolution run of many frames holds: no fd or memory leak, no slowdown, every frame kept.

The CI-size run of tests/soak.py (benchmarks run it at 200 frames).  Bounds are loose where the
machine's other work moves the figures: times are CPU times and medians, memory a fitted slope.
"""

import json

from tests.soak import soak

FRAMES = 40


def test_a_long_evolution_run_holds(tmp_path):
    result = soak(tmp_path, frames=FRAMES)
    rows = result["rows"]

    # every step's frame is recorded, once, and the live report names them all
    assert len(rows) == FRAMES and result["frames_recorded"] == FRAMES
    doc = json.loads((tmp_path / "evolution" / "evolution.json").read_text())
    assert doc["steps"] == list(range(FRAMES))
    assert len(doc["frames"]) == FRAMES * len(doc["units"]) * doc["seeds"]
    assert (tmp_path / "evolution" / "index.html").stat().st_size > 0

    # each frame closes what it opens (frames, grids, json, strip, videos, html)
    assert result["soak_fd_growth"] == 0, [r["fds"] for r in rows]

    # memory: Python objects are counted exactly; a frame adds its rows (a few objects), while a
    # copy of the network, a hook or a compiled graph kept per frame adds tens to hundreds
    assert result["soak_objects_per_frame"] < 30, [r["objects"] for r in rows]
    # and resident memory, whose fitted slope is noisy (~15 MB per 100 frames over 40 frames)
    assert result["soak_rss_growth_mb_per_100_frames"] < 60, [round(r["rss_mb"]) for r in rows]

    # a frame's own work (synthesis, top-k, its files) does not grow with the frames before it
    early, late = result["soak_frame_cpu_ms_quarters"]
    assert late < 2 * early + 20, (early, late)

    # a rebuild reads every frame: linear, so its time per frame does not grow (quadratic: ~4x here)
    assert result["soak_report_cpu_time_per_frame_ratio"] < 2, result["soak_report_ms_per_frame"]
