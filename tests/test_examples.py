"""The scripts in examples/ run at their CI size and write the pictures they describe."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name):
    """examples/<name>.py as a module (examples/ is not a package: the scripts are run by path)."""
    spec = importlib.util.spec_from_file_location(f"featvis_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_tiles(path, rows, columns, size, scale):
    """The tiles of a featvis.reports.grids.labelled_grid PNG, checking its layout on the way: the
    labels sit left and above, the body is rows x columns tiles of `size` px with 2 px white padding."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(float)
    cell = (size + 2) * scale
    body_h, body_w = rows * cell + 2 * scale, columns * cell + 2 * scale
    # 22 px of one-line column labels on top; the row labels' width depends on their text
    assert image.shape[0] == 22 + body_h and image.shape[1] > body_w, (image.shape, rows, columns)
    body = image[-body_h:, -body_w:]
    assert body[: 2 * scale].min() == 255 and body[:, : 2 * scale].min() == 255  # the padding
    pad = 2 * scale
    return [body[pad + r * cell: pad + r * cell + size * scale, pad + c * cell: pad + c * cell + size * scale]
            for r in range(rows) for c in range(columns)]


def assert_drawn(tiles):
    for index, tile in enumerate(tiles):
        assert tile.std() > 3, f"tile {index} is one flat colour"


def test_own_lightning_module_with_a_generator_draws_with_dgn_am(small_priors, tmp_path, capsys):
    generator = small_priors["generator"][1]["last_checkpoint"]  # a 32 px G, trained for the prior tests
    check_lightning_example(tmp_path, capsys, ["--generator", str(generator)], "dgn_am")


def test_own_lightning_module_without_one_draws_with_pixel_fft(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the callback's wandb calls run, and nothing leaves the machine
    printed = check_lightning_example(tmp_path, capsys, ["--wandb"], "pixel_fft")
    assert "no --generator given: drawing the units with pixel_fft" in printed


def check_lightning_example(tmp_path, capsys, argv, method):
    """Run own_lightning_module.py small; check its evolution record, frames, page and CSV log."""
    written = example("own_lightning_module").main(["--small", "--out", str(tmp_path), *argv])
    printed = capsys.readouterr().out
    assert written["method"] == method and str(written["index"]) in printed
    root = tmp_path / "evolution"
    assert written["index"] == root / "index.html" and written["index"].is_file()
    record = json.loads(written["evolution"].read_text())
    assert record["method"] == method and record["steps"] == [0, 4]
    frames = record["frames"]
    assert len(frames) == 2 * 4  # two steps x four units x one seed
    assert not [f["unit"] for f in frames if f["blank"]]
    assert {f["unit"].split(" ")[0] for f in frames} == {"layer2.1.add", "layer4.1.add", "fc"}
    assert [p.name for p in sorted((root / "grids").glob("*.png"))] == ["step0000000.png", "step0000004.png"]
    for frame in frames:
        for name in (frame["file"], frame["top_file"]):
            with Image.open(root / name) as tile:
                assert tile.format == "PNG" and tile.height >= 32
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()  # the CSVLogger's
    return printed


def test_resnet_maco_saves_a_grid_faded_by_the_alpha(tmp_path):
    out = tmp_path / "maco.png"
    written = example("resnet_maco").main(["--small", "--out", str(out)])
    found = written["found"]
    assert written["grid"] == out and len(found.rows) == 4 * 2 and not any(row["blank"] for row in found.rows)
    tiles = grid_tiles(out, rows=4, columns=2, size=32, scale=4)
    assert_drawn(tiles)
    # faded to white where the objective's gradient was weak: lighter than the syntheses themselves
    alpha = found.result.alpha
    assert alpha is not None and alpha.shape == (8, 1, 32, 32) and float(alpha.min()) < 0.5
    assert np.mean([t.mean() for t in tiles]) > float(found.images.mean()) * 255 + 10


def test_vit_token_unit_reads_the_class_token_the_patch_mean_and_a_patch(tmp_path):
    out = tmp_path / "vit.png"
    written = example("vit_token_unit").main(["--small", "--out", str(out)])
    layer = "encoder.layers.encoder_layer_3"
    assert written["units"] == [f"{layer} 5@cls", f"{layer} 5@mean", f"{layer} 5@10"]
    assert not any(row["blank"] for row in written["rows"])
    assert_drawn(grid_tiles(out, rows=3, columns=2, size=32, scale=4))


def test_feature_inversion_shows_the_original_beside_three_inversions(tmp_path):
    out = tmp_path / "inversion.png"
    written = example("feature_inversion").main(["--small", "--out", str(out)])
    assert written["image"] == tmp_path / "inversion_original.png" and written["image"].is_file()
    assert list(written["scores"]) == ["layer1", "layer2", "layer3"]
    assert all(score > 0.5 for score in written["scores"].values()), written["scores"]  # 1: a perfect match
    tiles = grid_tiles(out, rows=1, columns=4, size=32, scale=4)
    assert_drawn(tiles)
    # the first tile is the generated image itself, as the network read it
    original = np.asarray(Image.open(written["image"]).convert("RGB")).astype(float)
    assert np.abs(tiles[0][::4, ::4] - original).mean() < 2
    # and the inversions keep less of it the deeper their layer
    kept = [np.corrcoef(tile.mean(2).ravel(), tiles[0].mean(2).ravel())[0, 1] for tile in tiles[1:]]
    assert kept[0] > 0.3 and kept[0] > kept[2], kept
