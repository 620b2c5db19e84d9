"""featvis on a researcher's own network, data and training loop: torchvision and timm models,
token layers, grayscale and small inputs, directions, feature inversion and the callback in a
plain LightningModule."""

import json

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

import featvis
from tests.checks import PlainClassifier, shapes_folder
from featvis.evolution import FeatureEvolution
from featvis.errors import ConfigError
from featvis.nets.layers import pre_activation
from featvis.nets.targets import IMAGENET_MEAN, IMAGENET_STD

SIZE = 32


def test_callback_in_a_plain_lightning_module_with_normalized_data(small_priors, tmp_path):
    folder = shapes_folder(tmp_path / "data")
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    data = torchvision.datasets.ImageFolder(str(folder), transform=normalize)
    train = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    val = torch.utils.data.DataLoader(data, batch_size=16)
    module = PlainClassifier(torchvision.models.resnet18(num_classes=len(data.classes)))
    generator = small_priors["generator"][1]["last_checkpoint"]
    callback = FeatureEvolution(units=["layer2:0", "layer4:3", "fc:0", "fc:2"], method="dgn_am", generator=generator,
                                dirpath=str(tmp_path / "evolution"), steps=12, log_frames=2, linear_frames=0)
    trainer = L.Trainer(max_steps=6, callbacks=[callback], logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, train, val)

    record = json.loads((tmp_path / "evolution" / "evolution.json").read_text())
    frames = record["frames"]
    assert {f["step"] for f in frames} >= {0, 6}
    # what the net read was de-normalized from the data's own Normalize, with no attribute set by hand
    assert callback.contract["mean"] == pytest.approx(list(IMAGENET_MEAN))
    assert callback.contract["image_size"] == SIZE
    assert sum(f["blank"] for f in frames) == 0, [f["unit"] for f in frames if f["blank"]]
    # the logits are the module's output, named by the dataset's classes
    assert any(f["unit"].startswith("fc ") for f in frames)
    assert record["units"][0]["label"].startswith("layer2.1.add")  # read before the block's ReLU
    # top-k real images are shown de-normalized: the pool is the data's [0, 1] images again
    top = np.asarray(Image.open(tmp_path / "evolution" / frames[0]["top_file"]))
    assert top.mean() > 40, "the real images look like the normalized tensors"
    real = np.asarray(Image.open(next(folder.rglob("*.png"))))
    assert abs(float(top.mean()) - float(real.mean())) < 60
    assert all(p.requires_grad for p in module.net.parameters())  # the training network is left as it was


def test_callback_draws_maco_with_the_validation_datas_spectrum(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(16, 3, SIZE, SIZE), torch.randint(0, 3, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    callback = FeatureEvolution(units=["layer3:1", "fc:0"], method="pixel_maco", dirpath=str(tmp_path / "evolution"),
                                steps=4, log_frames=1, linear_frames=0, top_k=0)
    trainer = L.Trainer(max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(PlainClassifier(torchvision.models.resnet18(num_classes=3)), loader, loader)
    record = json.loads((tmp_path / "evolution" / "evolution.json").read_text())
    assert record["method"] == "pixel_maco" and record["top_k"] == 0 and len(record["frames"]) == 4
    assert callback.recorder.parts.space.magnitude.shape == (3, SIZE, SIZE // 2 + 1)


def test_callback_without_contract_or_validation_data_is_one_clear_line(tmp_path):
    callback = FeatureEvolution(units=["fc:0"], method="pixel_fft")
    module = PlainClassifier(torchvision.models.resnet18(num_classes=3))
    data = torch.utils.data.TensorDataset(torch.rand(8, 3, SIZE, SIZE), torch.zeros(8, dtype=torch.long))
    trainer = L.Trainer(max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"declares no input contract .* expected FeatureEvolution\(image_size="):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))


def test_normalized_data_without_a_normalize_to_undo_is_one_clear_line(tmp_path):
    callback = FeatureEvolution(units=["fc:0"], method="pixel_fft")
    module = PlainClassifier(torchvision.models.resnet18(num_classes=3))
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, SIZE, SIZE) * 2, torch.zeros(8, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = L.Trainer(max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"range over .* no torchvision Normalize .* FeatureEvolution\(mean="):
        trainer.fit(module, loader, loader)


def test_as_target_declares_the_contract_and_keeps_featvis_networks():
    resnet = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ConfigError, match=r"ResNet declares no input contract; expected featvis.as_target"):
        featvis.synthesize(resnet, [0], "pixel", steps=1)
    target = featvis.as_target(resnet, image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert target.logits_layer == "logits" and "layer4.1" in featvis.nets.layer_names(target)
    images = torch.rand(2, 3, SIZE, SIZE)
    resnet.eval()
    expected = resnet((images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    assert torch.allclose(target(images), expected, atol=1e-5)
    from featvis.nets import AlexNet

    own = AlexNet(num_classes=3, image_size=SIZE)
    assert featvis.as_target(own) is own and featvis.as_target(own, image_size=SIZE) is own
    with pytest.raises(ConfigError, match=r"image_size=64 disagrees with the AlexNet's own image_size=32"):
        featvis.as_target(own, image_size=64)
    for kwargs, message in (({"image_size": 0}, r"image_size=0; expected the side in pixels"),
                            ({"image_size": SIZE, "channels": 2}, r"channels=2; expected 3 \(RGB\) or 1"),
                            ({"image_size": SIZE, "mean": [0.5, 0.5]}, r"mean=\[0.5, 0.5\]; expected 3 values"),
                            ({"image_size": SIZE, "std": 0}, r"std=\[0.0, 0.0, 0.0\]; expected positive")):
        with pytest.raises(ConfigError, match=message):
            featvis.as_target(resnet, **kwargs)


def test_resnet_units_get_a_gradient_before_the_blocks_relu():
    torch.manual_seed(0)
    target = featvis.as_target(torchvision.models.resnet18(num_classes=10), image_size=SIZE)
    assert pre_activation(target, "layer2") == "layer2.1.add"
    assert pre_activation(target, "layer1.0") == "layer1.0.add"
    assert pre_activation(target, "fc") == "fc" and pre_activation(target, "logits") == "logits"
    found = featvis.synthesize(target, ["layer2:0", "layer4:3", "logits:1"], "pixel_fft", seeds=2, steps=20,
                               spatial="mean", pre_relu=True)
    assert [u.label for u in found.units][:2] == ["layer2.1.add 0", "layer4.1.add 3"]
    assert not any(row["blank"] for row in found.rows)


def test_redirected_relu_passes_a_gradient_only_where_the_relu_passes_none():
    from featvis.nets.layers import redirected_relu

    x = torch.tensor([[-1.0, -2.0, -0.5], [1.0, -1.0, 2.0]], requires_grad=True)
    assert torch.equal(redirected_relu(x), torch.relu(x))
    upstream = torch.tensor([[1.0, -1.0, 2.0], [3.0, 4.0, 5.0]])
    gradient, = torch.autograd.grad(redirected_relu(x), x, upstream)
    # row 0: dead everywhere, so the gradient is let through except where it pushes an inactive input lower
    assert gradient[0].tolist() == [1.0, 0.0, 2.0]
    assert gradient[1].tolist() == [3.0, 0.0, 5.0]  # row 1: the plain ReLU gradient


def _vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=5)


def test_vit_token_units_read_the_class_token_the_patch_mean_and_one_patch():
    target = featvis.as_target(_vit(), image_size=SIZE, mean=0.5, std=0.5)
    assert target.prefix_tokens == 1
    layer = "encoder.layers.encoder_layer_1"
    units = [f"{layer}:3@cls", f"{layer}:3@mean", f"{layer}:3@5", f"{layer}:3@1,2", f"{layer}:3"]
    found = featvis.synthesize(target, units, "pixel_fft", seeds=1, steps=10)
    tokens = featvis.nets.activations(target, found.images, [layer])[layer]
    patches = tokens[:, 1:]
    readings = [tokens[0, 0], patches[1].mean(0), patches[2, 5], patches[3, 1 * 4 + 2], patches[4, 2 * 4 + 2]]
    for row, reading in zip(found.rows, readings):
        assert row["best"]["activation"] == pytest.approx(float(reading[3]), abs=1e-4)
        assert not row["blank"]
    start = featvis.nets.activations(target, torch.full((1, 3, SIZE, SIZE), 0.5), [layer])[layer]
    assert found.rows[0]["best"]["activation"] > float(start[0, 0, 3])  # the class token's feature rose
    for spec, message in ((f"{layer}:3@16", r"patch 16 out of range; expected 0..15"),
                          ("conv_proj:3@cls", r"spatial='cls' on a conv map"),
                          ("logits:1@2,2", r"'logits' is a vector of 5 units; expected no position")):
        with pytest.raises(ConfigError, match=message):
            featvis.synthesize(target, [spec], "pixel", steps=1)


def test_timm_vit_by_name_with_local_weights_as_the_target_block_builds_it(tmp_path):
    timm = pytest.importorskip("timm")
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=SIZE, patch_size=8)
    torch.save(net.state_dict(), tmp_path / "vit.pt")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"torchvision": None, "timm": "vit_tiny_patch16_224", "weights": str(tmp_path / "vit.pt"),
                            "kwargs": {"img_size": SIZE, "patch_size": 8}, "num_classes": 4, "image_size": SIZE,
                            "mean": None, "std": None, "channels": 3, "class_names": ["a", "b", "c", "d"]})
    from featvis.nets.targets import build_target

    target = build_target(cfg)
    assert target.prefix_tokens == 1 and target.class_names == ["a", "b", "c", "d"]
    assert target.input_mean.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])  # timm's own pretrained_cfg
    found = featvis.synthesize(target, ["blocks.1:7@cls", "c"], "pixel_fft", seeds=1, steps=6)
    assert [u.label for u in found.units] == ["blocks.1 7@cls", "logits c"]
    assert not any(row["blank"] for row in found.rows)


def test_grayscale_small_target_reads_the_luminance():
    net = torchvision.models.resnet18(num_classes=3)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    target = featvis.as_target(net, image_size=16, mean=0.1307, std=0.3081, channels=1)
    grey = torch.rand(2, 1, 16, 16)
    net.eval()
    assert torch.allclose(target(grey.expand(-1, 3, -1, -1)), net((grey - 0.1307) / 0.3081), atol=1e-3)
    found = featvis.synthesize(target, [0, 2], "pixel_fft", seeds=1, steps=6)
    assert found.images.shape == (2, 3, 16, 16) and not any(row["blank"] for row in found.rows)


def test_direction_and_feature_inversion_from_python_and_files(tmp_path):
    target = featvis.as_target(torchvision.models.resnet18(num_classes=10), image_size=SIZE)
    vector = torch.randn(256)
    np.save(tmp_path / "cav.npy", vector.numpy())
    torch.save(torch.stack([torch.randn(256), vector]), tmp_path / "dictionary.pt")
    photo = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    units = [featvis.direction("layer3", vector, at="mean"), "layer3:direction=" + str(tmp_path / "cav.npy") + "@mean",
             f"layer3:direction={tmp_path / 'dictionary.pt'}#1@mean", f"layer2:invert={tmp_path / 'photo.png'}"]
    found = featvis.synthesize(target, units, "pixel_fft", seeds=1, steps=30)
    labels = [u.label for u in found.units]
    assert labels[1:] == ["layer3 direction cav.npy", "layer3 direction dictionary.pt#1", "layer2 invert photo.png"]
    first = [r["best"]["activation"] for r in found.rows[:3]]
    assert first[0] == pytest.approx(first[1], rel=1e-4) and first[1] == pytest.approx(first[2], rel=1e-4)
    assert found.rows[0]["best"]["probability"] is None
    target.eval()  # as the sampler read it (batch-norm statistics, not the batch's)
    acts = featvis.nets.activations(target, found.images[:1], ["layer3"])["layer3"].mean((2, 3))[0]
    assert found.rows[0]["best"]["activation"] == pytest.approx(float(acts @ (vector / vector.norm())), rel=1e-4)
    # the inversion's score (1 at a perfect match) rose from the start image's
    reference = featvis.synthesis.methods.read_image(str(tmp_path / "photo.png"), SIZE)
    start = featvis.nets.activations(target, torch.full((1, 3, SIZE, SIZE), 0.5), ["layer2"])["layer2"]
    wanted = featvis.nets.activations(target, reference, ["layer2"])["layer2"]
    start_score = 1 - float((start - wanted).square().sum() / wanted.square().sum())
    assert found.rows[3]["best"]["activation"] > start_score + 0.05
    json.dumps(found.rows)  # every row is JSON (no NaN, no tensors)
    custom = featvis.custom("layer3", lambda a: -a[:, :8].square().mean((1, 2, 3)))
    assert featvis.synthesize(target, [custom], "pixel", seeds=1, steps=2).rows[0]["unit"] == "layer3 custom <lambda>"


@pytest.mark.parametrize("spec, message", [
    ("layer3:direction=/no/such.npy", r"layer3:direction=/no/such.npy: /no/such.npy does not exist"),
    ("layer3:direction={bad}", r"holds \(3,\); expected 256 values|has 3 values; expected 256"),
    ("layer3:direction={matrix}", r"holds 2 directions; expected one picked as .*#K with K in 0..1"),
    ("layer2:invert=/no/such.png", r"invert=/no/such.png: not a readable image"),
])
def test_bad_directions_and_inversions_are_one_clear_line(tmp_path, spec, message):
    np.save(tmp_path / "bad.npy", np.ones(3, dtype=np.float32))
    np.save(tmp_path / "matrix.npy", np.ones((2, 256), dtype=np.float32))
    target = featvis.as_target(torchvision.models.resnet18(num_classes=10), image_size=SIZE)
    spec = spec.format(bad=tmp_path / "bad.npy", matrix=tmp_path / "matrix.npy")
    with pytest.raises(ConfigError, match=message):
        featvis.synthesize(target, [spec], "pixel", steps=1)


def make_tiny_convnet(width: int = 8, num_classes: int = 3) -> nn.Module:
    """A user's own factory, for target._target_."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def test_visualize_takes_directions_inversions_and_any_factory(tmp_path):
    from tests.test_synthesis import _compose
    from featvis.jobs.visualize import visualize

    np.save(tmp_path / "cav.npy", np.random.default_rng(0).normal(size=128).astype(np.float32))
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), weights)
    base = [f"output_dir={tmp_path / 'out'}", "target.torchvision=resnet18", f"target.weights={weights}",
            f"target.image_size={SIZE}", "target.num_classes=10", "method=pixel_fft", "seeds=1", "steps=4",
            "gif=false", "evaluation.real_images=0", "device=cpu"]
    # as on a command line: units='["layer2:direction=cav.npy@mean","layer2:invert=photo.png",logits:3]'
    units = f"units=[\"layer2:direction={tmp_path / 'cav.npy'}@mean\",\"layer2:invert={tmp_path / 'photo.png'}\",logits:3]"
    summary = visualize(_compose(*base, units))
    assert [r["unit"] for r in summary["results"]] == ["layer2 direction cav.npy", "layer2 invert photo.png", "logits 3"]
    assert summary["results"][0]["terms"][0]["kind"] == "direction" and summary["layer"] == "logits"
    assert summary["results"][0]["best"]["probability"] is None
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["target"] == "resnet18" and len(metrics["results"]) == 3
    factory = [f"output_dir={tmp_path / 'own'}", f"+target._target_={__name__}.make_tiny_convnet", "+target.width=6",
               f"target.image_size={SIZE}", "method=pixel", "seeds=1", "steps=2", "gif=false",
               "evaluation.real_images=0", "device=cpu", "units=[0,2]"]
    summary = visualize(_compose(*factory))
    assert [r["unit"] for r in summary["results"]] == ["0", "2"] and summary["target"].endswith("make_tiny_convnet")
    with pytest.raises(ConfigError, match=r"target._target_='no_such.module.make' cannot be imported"):
        visualize(_compose(*factory[:1], "+target._target_=no_such.module.make", *factory[3:]))


def test_the_readmes_own_model_example_runs(monkeypatch, tmp_path, capsys):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## Your own model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # CI runs it from an installed wheel in another folder too (.ci/wheel_check.py)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    found, tokens, other = namespace["found"], namespace["tokens"], namespace["other"]
    assert found.images.shape == (6, 3, 64, 64) and not any(r["blank"] for r in found.rows)
    assert [u.label for u in tokens.units] == ["encoder.layers.encoder_layer_1 5@cls", "encoder.layers.encoder_layer_1 5@mean"]
    assert [r["unit"] for r in other.rows] == ["layer3 direction python", "layer2 custom <lambda>"]
    assert "torch.Size([6, 3, 64, 64])" in capsys.readouterr().out


def test_visualize_evolution_over_a_plain_modules_checkpoints(tmp_path):
    from tests.test_synthesis import _compose
    from featvis.jobs.visualize import visualize

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(16, 3, SIZE, SIZE), torch.randint(0, 4, (16,)))
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=-1,
                                                      filename="{step}")
    trainer = L.Trainer(max_steps=4, callbacks=[checkpoints], logger=False, enable_progress_bar=False,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(PlainClassifier(torchvision.models.resnet18(num_classes=4)),
                torch.utils.data.DataLoader(data, batch_size=4))
    cfg = _compose(f"output_dir={tmp_path / 'out'}", "mode=evolution", f"target.ckpt_dir={tmp_path / 'ckpts'}",
                   "target.torchvision=resnet18", "target.num_classes=4", f"target.image_size={SIZE}",
                   "method=pixel_fft", "seeds=1", "steps=3", "top_k=0", "units=[layer3:1,logits:2]", "device=cpu")
    summary = visualize(cfg)
    assert summary["steps"] == [2, 4]
    record = json.loads((tmp_path / "out" / "evolution" / "evolution.json").read_text())
    assert [u["label"] for u in record["units"]] == ["layer3 1", "logits 2"]
    first, last = ({f["unit"]: f["activation"] for f in record["frames"] if f["step"] == s} for s in (2, 4))
    assert first != last  # each frame read its own checkpoint's weights


def test_a_unit_dead_on_its_start_image_moves_only_with_the_redirected_gradient():
    from featvis.nets import AlexNet

    net = AlexNet(num_classes=15, image_size=SIZE, fc6_dim=64, fc7_dim=64).eval()
    with torch.no_grad():
        net.conv3.bn.bias[0] = -3.0  # channel 0 of conv3 is 0 everywhere on grey after its ReLU
    moved = {}
    for window in (0, 16):
        method = featvis.method_config("pixel_noprior", f"step.redirect_relu={window}")  # no operator moves it either
        found = featvis.synthesize(net, ["conv3:0"], method, seeds=1, steps=20, spatial="mean", keep="last")
        moved[window] = not found.rows[0]["blank"]
    assert moved == {0: False, 16: True}
    sampler = featvis.synthesis.synthesize.sampler_for(net, found.units, featvis.load_method(
        featvis.method_config("pixel"), None, None, SIZE))
    assert sampler.redirected.conv1.conv.weight is net.conv1.conv.weight  # a copy of the graph, not of the weights
