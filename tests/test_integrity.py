"""`featvis.tools.integrity`: outputs under final names read back whole; temporary files are listed apart."""

import json

import torch
from PIL import Image

from featvis.tools.integrity import main, scan
from tests.checks import frame_check
from featvis.io import remove_partials, save_gif, save_png, save_text


def test_scan_finds_truncated_outputs_and_leftover_temporaries(tmp_path, capsys):
    good = tmp_path / "good"
    save_png(torch.rand(3, 16, 16), good / "a.png")
    save_gif([torch.rand(3, 16, 16) for _ in range(3)], good / "a.gif")
    save_text(json.dumps({"ok": 1}), good / "metrics.json")
    save_text("<html><body></body></html>", good / "index.html")
    torch.save({"state_dict": {"w": torch.ones(2)}}, good / "last.ckpt")
    report = scan(good)
    assert len(report["checked"]) == 5 and report["broken"] == [] and report["partial"] == []
    assert main([str(good)]) == 0

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "a.gif", "metrics.json", "last.ckpt", "index.html"):
        data = (good / name).read_bytes()
        (bad / name).write_bytes(data[: len(data) // 2])
    Image.new("RGB", (8, 8)).save(bad / ".grid.png.partial123.png")
    (bad / "wandb").mkdir()
    (bad / "wandb" / "run.json").write_text("{")  # wandb's own files are not checked
    report = scan(bad)
    assert sorted(line.split(":")[0].rsplit("/", 1)[-1] for line in report["broken"]) == [
        "a.gif", "a.png", "index.html", "last.ckpt", "metrics.json"]
    assert [p.rsplit("/", 1)[-1] for p in report["partial"]] == [".grid.png.partial123.png"]
    assert main([str(bad)]) == 1
    assert "5 broken, 1 temporary" in capsys.readouterr().out
    assert remove_partials(bad) == 1 and scan(bad)["partial"] == []
    assert main([str(tmp_path / "nowhere")]) == 2


def test_frame_check_counts_lost_repeated_and_stray_frames(tmp_path):
    units = [{"label": "fc8 0"}, {"label": "conv5 1"}]
    frames = [{"step": s, "unit": u["label"], "seed": 0, "file": f"frames/step{s}/{i}.png"}
              for s in (0, 2, 4) for i, u in enumerate(units)]
    for frame in frames:
        save_png(torch.rand(3, 4, 4), tmp_path / frame["file"])

    def check(recorded, expected=frozenset({0, 2, 4})):
        save_text(json.dumps({"units": units, "seeds": 1, "frames": recorded}), tmp_path / "evolution.json")
        return frame_check(tmp_path, set(expected))

    assert check(frames) == (0, 0)
    assert check(frames, {0, 2, 4, 6}) == (2, 0)   # step 6 of the schedule never recorded: 2 units lost
    assert check(frames[1:]) == (1, 1)            # one record missing, its image now a stray file
    assert check(frames + frames[:1]) == (0, 1)   # one frame recorded twice
