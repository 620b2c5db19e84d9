"""`featvis.integrity`: outputs under final names read back whole; temporary files are listed apart."""

import json

import torch
from PIL import Image

from featvis.integrity import main, scan
from featvis.reports.grids import remove_partials, save_gif, save_png, save_text


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
