"""The published DeePSiM generators (upconvGAN state dicts) as featvis Generators.

The files themselves are not here: the tests build state dicts with the published key names
and shapes and random values.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from featvis.checkpoints import load_generator
from featvis.errors import CheckpointError, ConfigError
from featvis.nets import AlexNet, CodeStatistics, Generator
from featvis.nets.adapters import fit_images
from featvis.nets.deepsim_weights import (LAYERS, caffe_to_rgb, from_upconv, is_upconv, published_keys,
                                          read_statistics, save_statistics, statistics_path)

from .conftest import CONF

# The published layers in order: (name, in, out, kernel); None in: the code size.
PUBLISHED = [("defc7", None, 4096, 0), ("defc6", 4096, 4096, 0), ("defc5", 4096, 4096, 0),
             ("deconv5", 256, 256, 4), ("conv5_1", 256, 512, 3), ("deconv4", 512, 256, 4),
             ("conv4_1", 256, 256, 3), ("deconv3", 256, 128, 4), ("conv3_1", 128, 128, 3),
             ("deconv2", 128, 64, 4), ("deconv1", 64, 32, 4), ("deconv0", 32, 3, 4)]


def published_state(code_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out like upconvGAN_fc6/fc7 (code_dim 4096) or fc8 (1000), random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, d_in, d_out, k in PUBLISHED:
        d_in = code_dim if d_in is None else d_in
        shape = (d_out, d_in) if k == 0 else (d_in, d_out, k, k)  # transposed convolutions: (in, out, k, k)
        fan_in = d_in * (k * k if k else 1)
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_in)
        state[f"{name}.bias"] = torch.randn(d_out, generator=g) * 0.01
    return state


def reference_forward(state: dict[str, torch.Tensor], code: torch.Tensor) -> torch.Tensor:
    """The published network run from its state dict: raw BGR output around the mean, 0-255."""
    x = code
    for name, _, _, k in PUBLISHED:
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        if k == 0:
            x = F.linear(x, w, b)
        else:
            x = F.conv_transpose2d(x, w, b, stride=2 if k == 4 else 1, padding=1)
        if name != "deconv0":
            x = F.leaky_relu(x, 0.3)
        if name == "defc5":
            x = x.view(-1, 256, 4, 4)
    return x


@pytest.fixture(scope="module")
def fc8_state():
    return published_state(1000)


@pytest.fixture(scope="module")
def fc6_file(tmp_path_factory):
    """upconvGAN_fc6.pt with published names (prefixed `G.`, as some copies are) and random values."""
    path = tmp_path_factory.mktemp("deepsim") / "upconvGAN_fc6.pt"
    torch.save({f"G.{k}": v for k, v in published_state(4096, seed=1).items()}, path)
    return path


def test_conversion_gives_the_deepsim_preset_with_every_published_layer(fc8_state):
    generator = from_upconv(fc8_state, "upconvGAN_fc8.pt")
    preset = OmegaConf.to_container(OmegaConf.load(CONF / "generator" / "deepsim.yaml").net)
    preset.pop("_target_")
    assert generator.spec == Generator(1000, **preset).spec
    converted = generator.state_dict()
    assert set(converted) == {f"{LAYERS[name][0]}.{part}" for name in LAYERS for part in ("weight", "bias")}
    for name, d_in, d_out, k in PUBLISHED:
        prefix = LAYERS[name][0]
        expected = {0: (d_out, d_in or 1000), 3: (d_out, d_in, 3, 3), 4: (d_in, d_out, 4, 4)}[k]
        assert tuple(converted[f"{prefix}.weight"].shape) == expected, name
    assert torch.equal(converted["fc.0.weight"], fc8_state["defc7.weight"])
    # A stride-1 transposed 3x3 convolution, as the plain convolution it became.
    x = torch.randn(2, 256, 8, 8)
    want = F.conv_transpose2d(x, fc8_state["conv5_1.weight"], fc8_state["conv5_1.bias"], padding=1)
    assert torch.allclose(generator.deconv.conv0(x), want, atol=1e-5)


def test_colour_order_and_scale_on_a_known_output(fc8_state):
    state = dict(fc8_state)
    state["deconv0.weight"] = torch.zeros(32, 3, 4, 4)
    state["deconv0.bias"] = torch.tensor([10.0, -17.0, 132.0])  # B, G, R around the mean
    image = from_upconv(state)(torch.randn(1, 1000))
    # R = 132 + 123, G = -17 + 117, B = 10 + 104, on 0-255
    assert torch.allclose(image[0, :, 100, 37], torch.tensor([255.0, 100.0, 114.0]) / 255, atol=1e-6)
    raw = torch.randn(2, 3, 5, 5) * 50
    assert torch.allclose(caffe_to_rgb(raw)[:, 0], (raw[:, 2] + 123) / 255)


def test_the_converted_generator_draws_what_the_published_one_draws(fc8_state):
    code = torch.rand(2, 1000) * 3
    with torch.no_grad():
        want = caffe_to_rgb(reference_forward(fc8_state, code))
        got = from_upconv(fc8_state)(code)
    assert got.shape == (2, 3, 256, 256)
    assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_key_variants_and_refusals():
    assert published_keys({"G.defc7.1.weight": 1}) == {"defc7.weight": 1}
    assert not is_upconv({"state_dict": {}, "featvis": {}})
    pool5 = {"Rconv6.weight": torch.zeros(512, 256, 3, 3), "deconv0.weight": torch.zeros(32, 3, 4, 4)}
    assert is_upconv(pool5)
    with pytest.raises(CheckpointError, match="pool5 generator .*expected the fc6, fc7 or fc8"):
        from_upconv(pool5, "upconvGAN_pool5.pt")
    small = {f"{name}.{part}": torch.zeros(3) for name in LAYERS for part in ("weight", "bias")}
    with pytest.raises(CheckpointError, match=r"defc7.weight has shape \(3,\); expected"):
        from_upconv(small, "x.pt")
    with pytest.raises(CheckpointError, match="lacks deconv0.weight"):
        from_upconv({k: v for k, v in small.items() if not k.startswith("deconv0")}, "x.pt")


def _codes(n: int = 64, dim: int = 4096) -> torch.Tensor:
    return torch.relu(torch.randn(n, dim, generator=torch.Generator().manual_seed(3)))


def test_load_generator_needs_statistics_and_records_what_it_loaded(fc6_file, tmp_path):
    stats_file = statistics_path(fc6_file)
    stats_file.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"without code statistics; expected .*upconvGAN_fc6\.stats\.pt"):
        load_generator(fc6_file)
    codes = tmp_path / "codes.pt"
    torch.save({"codes": _codes(dim=1000)}, codes)
    with pytest.raises(ConfigError, match=r"shape \(64, 1000\); expected \(N >= 2, 4096\)"):
        load_generator(fc6_file, stats=codes)
    torch.save({"codes": _codes()}, codes)
    generator, stats, record = load_generator(fc6_file, stats=codes)
    assert (record["kind"], record["source"], record["layer"], record["code_dim"], record["image_size"]) == \
        ("generator", "deepsim", "fc6", 4096, 256)
    assert record["encoder"]["code_layer"] == "fc6" and stats.mean.shape == (4096,)
    save_statistics(CodeStatistics(4096).fit(_codes()), stats_file, {"code_layer": "fc7", "code_dim": 4096})
    with pytest.raises(ConfigError, match="are of fc7 codes; expected statistics of fc6"):
        load_generator(fc6_file)


def test_statistics_from_a_prior_checkpoint_through_the_command_line(fc6_file, tmp_path, capsys):
    from featvis.tools.deepsim import main

    stats = CodeStatistics(4096).fit(_codes())
    prior = tmp_path / "prior.ckpt"
    torch.save({"featvis": {"kind": "prior", "encoder": {"code_layer": "fc6", "code_dim": 4096,
                                                         "checkpoint": "E.ckpt"}},
                "state_dict": {f"code_stats.{k}": v for k, v in stats.state_dict().items()}}, prior)
    out = main([str(fc6_file), "--from", str(prior)])
    assert out == statistics_path(fc6_file) and "statistics of 64 fc6 codes" in capsys.readouterr().out
    read, encoder = read_statistics(out, 4096)
    assert torch.equal(read.quantiles, stats.quantiles) and encoder["checkpoint"] == "E.ckpt"
    with pytest.raises(ConfigError, match="expected either --from"):
        main([str(fc6_file)])


def test_statistics_estimated_from_data_through_an_encoder(tmp_path):
    """The route without a prior: fc6 codes of `data` through encoder=caffenet (random weights here)."""
    from featvis.tools.deepsim import main

    weights = tmp_path / "alexnet.pth"
    net = AlexNet(1000, image_size=227, channels=[64, 192, 384, 256, 256], kernels=[11, 5, 3, 3, 3],
                  strides=[4, 1, 1, 1, 1], paddings=[2, 2, 1, 1, 1], fc6_dim=4096, fc7_dim=4096, batch_norm=False)
    torch.save(net.state_dict(), weights)
    generator = tmp_path / "upconvGAN_fc6.pt"
    torch.save(published_state(4096, seed=2), generator)
    out = main([str(generator), "encoder=caffenet", f"encoder.weights={weights}", "image_size=227",
                "data.train_size=16", "data.val_size=8", "data.batch_size=8", "encoder.stats_images=16"])
    stats, encoder = read_statistics(out, 4096)
    assert int(stats.count) == 16 and encoder["code_layer"] == "fc6" and encoder["checkpoint"] == str(weights)
    assert (stats.mean >= 0).all() and stats.std.sum() > 0


def test_a_dgn_am_step_at_227_px_on_a_published_generator(fc6_file):
    import featvis

    save_statistics(CodeStatistics(4096).fit(_codes()), statistics_path(fc6_file), {"code_layer": "fc6"})
    torch.manual_seed(0)
    target = AlexNet(10, image_size=227, channels=[8, 8, 8, 8, 8], kernels=[11, 5, 3, 3, 3],
                     strides=[4, 2, 1, 1, 2], paddings=[2, 2, 1, 1, 1], fc6_dim=32, fc7_dim=32,
                     batch_norm=False).eval()
    method = featvis.load_method(featvis.method_config("dgn_am"), str(fc6_file), None, target.image_size)
    assert method.generator_record["layer"] == "fc6"
    start = method.start(1, 1)
    found = featvis.synthesize(target, [3], method, seeds=1, steps=2, start=start)
    assert found.images.shape == (1, 3, 227, 227) and torch.isfinite(found.images).all()
    with torch.no_grad():
        before = fit_images(method.space(start), 227)  # G draws 256 px; the target sees the centre 227
    assert (found.result.last - before).abs().max() > 0
    row = found.rows[0]
    assert math.isfinite(row["best"]["objective"]) and row["best"]["objective"] >= row["last"]["objective"] - 1e-6
