"""The sampler, its objectives and priors, and visualize.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import featvis
from featvis.checkpoints import load_classifier, load_generator
from featvis.errors import CheckpointError, ConfigError
from featvis.synthesis.objectives import ObjectiveBatch, Term
from featvis.synthesis.sampler import Sampler, SamplerSettings
from featvis.synthesis.priors import ClipCodes, Decay, GaussianPrior, robustness_transform
from featvis.synthesis.spaces import CodeSpace
from featvis.jobs.visualize import parse_units, visualize

from .conftest import CONF, ROOT


def test_objective_modes_follow_table_1():
    acts = {"fc8": torch.tensor([[1.0, 2.0, 3.0]]), "conv": torch.arange(18.0).view(1, 2, 3, 3)}
    for mode, expected in (("raw", 2.0), ("softmax", torch.tensor([1.0, 2, 3]).softmax(0)[1].item()),
                           ("log_softmax", torch.tensor([1.0, 2, 3]).log_softmax(0)[1].item())):
        batch = ObjectiveBatch([[Term("fc8", 1)]], {"fc8": 3, "conv": 2}, mode=mode)
        assert batch(acts).item() == pytest.approx(expected)
    both = ObjectiveBatch([[Term("fc8", 0), Term("fc8", 2)], [Term("fc8", 2), Term("fc8", 0, -1.0)]],
                          {"fc8": 3})
    assert both({"fc8": acts["fc8"].repeat(2, 1)}).tolist() == [4.0, 2.0]  # A+B, A-B
    centre = ObjectiveBatch([[Term("conv", 1)]], {"conv": 2})
    mean = ObjectiveBatch([[Term("conv", 1)]], {"conv": 2}, spatial="mean")
    assert centre(acts).item() == 13.0 and mean(acts).item() == 13.0  # channel 1 holds 9..17
    acts["conv"][0, 1, 1, 1] = 100.0
    assert centre(acts).item() == 100.0 and mean(acts).item() == pytest.approx((9 + 10 + 11 + 12 + 14 + 15 + 16 + 17 + 100) / 9)



def test_selectivity_adds_the_log_softmax_so_another_class_cannot_raise_a_raw_unit():
    logits = torch.tensor([[5.0, 1.0, 0.0], [1.0, 5.0, 0.0]])  # unit 0 leads in row 0, unit 1 in row 1
    batch = ObjectiveBatch([[Term("fc8", 0)], [Term("fc8", 0)]], {"fc8": 3}, selectivity=2.0)
    expected = logits[:, 0] + 2.0 * logits.log_softmax(1)[:, 0]
    assert torch.allclose(batch({"fc8": logits}), expected)
    assert batch({"fc8": logits})[0].item() == pytest.approx(5.0, abs=0.05)  # ~raw while the unit leads
    assert batch({"fc8": logits})[1].item() < 1.0 - 2 * 4.0  # penalized by the lead of unit 1
    # While unit 1 leads, unit 0's gradient also pulls unit 1 down (a raw unit's would not touch it).
    one = ObjectiveBatch([[Term("fc8", 0)]], {"fc8": 3}, selectivity=2.0)
    trailing = logits[1:].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(one({"fc8": trailing}).sum(), trailing)
    assert grad[0, 0] > 1.0 and grad[0, 1] < -1.0
    softmax_mode = ObjectiveBatch([[Term("fc8", 0)]], {"fc8": 3}, mode="softmax", selectivity=1.0)
    assert softmax_mode({"fc8": logits[:1]}).item() == pytest.approx(
        (logits[0].softmax(0)[0] + logits[0].log_softmax(0)[0]).item())
    conv = ObjectiveBatch([[Term("conv", 1)]], {"conv": 2}, selectivity=1.0)  # channels do not compete
    assert conv({"conv": torch.arange(18.0).view(1, 2, 3, 3)}).item() == 13.0


@pytest.mark.parametrize("objectives, sizes, kwargs, message", [
    ([[Term("fc8", 3)]], {"fc8": 3}, {}, "unit 3 out of range for layer 'fc8'; expected 0 to 2"),
    ([[Term("fc9", 0)]], {"fc8": 3}, {}, "layer 'fc9' not available"),
    ([[Term("fc8", 0)]], {"fc8": 3}, {"mode": "prob"}, "objective mode 'prob'"),
    ([[]], {"fc8": 3}, {}, "empty objective"),
    ([[Term("fc8", 0)]], {"fc8": 3}, {"selectivity": -1.0}, r"method.objective.selectivity=-1.0; expected a non-negative"),
    ([[Term("fc8", 0)]], {"fc8": 3}, {"selectivity": "high"}, r"method.objective.selectivity=high; expected a non-negative"),
])
def test_bad_objectives(objectives, sizes, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ObjectiveBatch(objectives, sizes, **kwargs)


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("lr", float("nan")), ("steps", 0),
                                          ("eps2_end", -0.1), ("eps3", -0.1), ("eps3_end", -0.1),
                                          ("scale", 1.5),
                                          ("rotate", -1.0), ("target_blur", -0.5), ("optimizer", "lbfgs")])
def test_bad_sampler_settings_name_the_value(field, value):
    with pytest.raises(ConfigError, match=f"method.step.{field}="):
        SamplerSettings(**{field: value})


def test_step_prior_and_noise_schedules_are_linear_from_first_to_last_step():
    s = SamplerSettings(steps=5, lr=1.0, lr_end=0.2, eps2=0.04, eps2_end=0.0, eps3=0.2, eps3_end=0.0)
    assert [round(s.lr_at(t), 6) for t in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert [round(s.eps2_at(t), 6) for t in range(5)] == [0.04, 0.03, 0.02, 0.01, 0.0]
    assert [round(s.eps3_at(t), 6) for t in range(5)] == [0.2, 0.15, 0.1, 0.05, 0.0]
    constant = SamplerSettings(steps=5, eps2=0.03, eps3=0.2)  # no *_end: constant prior weight and noise
    assert constant.eps2_at(4) == 0.03 and constant.eps3_at(4) == 0.2


def test_units_by_index_name_and_combination():
    names = ["red circle", "green circle", "blue circle"]
    units = parse_units([0, "blue circle", "0+2", "1-0.5*2"], "fc8", names, 3)
    assert [u.label for u in units] == ["0 red circle", "blue circle", "0+2", "1-0.5*2"]
    assert [[(t.unit, t.weight) for t in u.terms] for u in units] == [
        [(0, 1.0)], [(2, 1.0)], [(0, 1.0), (2, 1.0)], [(1, 1.0), (2, -0.5)]]
    with pytest.raises(ConfigError, match="'purple star' is not an index or a class name"):
        parse_units(["purple star"], "fc8", names, 3)


@pytest.fixture(scope="module")
def target(small_classifier):
    net, record = load_classifier(small_classifier[1]["best_checkpoint"])
    return net, record


def _pixel_sampler(net, units, steps=30, prior=None, **settings):
    objectives = ObjectiveBatch([[Term("fc8", u)] for u in units], {"fc8": 15})
    settings = {"lr": 0.02, "normalize_gradient": True, **settings}
    return Sampler(net, objectives, SamplerSettings(steps=steps, **settings), prior=prior)


def test_pixel_am_raises_the_unit_and_leaves_the_network_alone(target):
    net, _ = target
    net.train()  # the caller's mode must survive
    flags = [p.requires_grad for p in net.parameters()]
    weights = [p.detach().clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    z0 = torch.full((3, 3, 32, 32), 0.5)
    result = _pixel_sampler(net, [0, 5, 9]).run(z0)
    with torch.no_grad():
        start = net.eval()(z0)[torch.arange(3), torch.tensor([0, 5, 9])]
    net.train()
    assert (result.best_value > start + 1.0).all(), (start, result.best_value)
    assert (result.best_value >= result.last_value).all()
    assert result.last.min() >= 0 and result.last.max() <= 1
    assert net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))
    assert torch.equal(torch.get_rng_state(), rng)


def test_adaptive_steps_move_every_element_by_about_lr_and_raise_the_unit(target):
    """Adam's first step is lr times the sign of the update, per element, whatever the gradient's
    scale there; the plain step moves an element in proportion to its gradient."""
    net, _ = target
    z0 = torch.full((2, 3, 32, 32), 0.5)
    for optimizer in ("adam", "nadam"):
        one = _pixel_sampler(net, [0, 5], steps=1, lr=0.01, optimizer=optimizer, redirect_relu=0).run(z0)
        moved = (one.last_z - z0).abs()
        assert moved.max() <= 0.011 and moved.median() > 0.005  # NAdam: lr x (1 + its momentum's first weight), (optimizer, moved.median())
        many = _pixel_sampler(net, [0, 5], steps=30, lr=0.01, optimizer=optimizer).run(z0)
        with torch.no_grad():
            start = net.eval()(z0)[torch.arange(2), torch.tensor([0, 5])]
        assert (many.best_value > start + 1.0).all(), (optimizer, start, many.best_value)
    plain = (_pixel_sampler(net, [0, 5], steps=1, lr=0.01, redirect_relu=0).run(z0).last_z - z0).abs()
    assert plain.max() > 3 * plain.median()  # large gradients take large steps


def test_target_blur_keeps_fine_texture_out_of_the_units_reach(target):
    """The target reads a blurred image, so the step carries no fine detail: the change that pixel
    AM makes has almost no power above a third of a cycle per pixel, while the unit still rises."""
    net, _ = target
    z0 = torch.full((3, 3, 32, 32), 0.5)

    def high_band_share(result):
        change = result.last_z - z0
        power = torch.fft.rfft2(change - change.mean((2, 3), keepdim=True), norm="ortho").abs() ** 2
        fy = torch.fft.fftfreq(32).abs().view(-1, 1)
        fx = torch.fft.rfftfreq(32).view(1, -1)
        return float(power[..., (fy > 1 / 3) | (fx > 1 / 3)].sum() / power.sum())

    sharp = _pixel_sampler(net, [0, 5, 9]).run(z0)
    blurred = _pixel_sampler(net, [0, 5, 9], target_blur=1.0).run(z0)
    with torch.no_grad():
        start = net.eval()(z0)[torch.arange(3), torch.tensor([0, 5, 9])]
    assert (blurred.best_value > start + 1.0).all(), (start, blurred.best_value)
    assert high_band_share(blurred) < 0.1 * high_band_share(sharp), (high_band_share(blurred),
                                                                      high_band_share(sharp))


def test_the_prior_weight_follows_its_schedule(target):
    net, _ = target
    z0 = torch.full((1, 3, 32, 32), 0.9)
    # eps1 = 0: only the prior moves z.  Weight 0 at the first step, 1 at the second: one full
    # step of the L2 prior (-z) from 0.9 lands on 0.
    ramp = _pixel_sampler(net, [0], steps=2, prior=GaussianPrior(), eps1=0.0, eps2=0.0, eps2_end=1.0, lr=1.0)
    assert torch.allclose(ramp.run(z0).last_z, torch.zeros_like(z0))
    with pytest.raises(ConfigError, match=r"method.step.eps2=0.0 \(eps2_end=1.0\) but no prior"):
        _pixel_sampler(net, [0], steps=2, eps2=0.0, eps2_end=1.0)


def test_one_batched_step_equals_one_unit_at_a_time(target):
    net, _ = target
    z0 = 0.5 + 0.05 * torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batched = _pixel_sampler(net, [1, 4, 7], steps=5).run(z0)
    for row, unit in enumerate([1, 4, 7]):
        alone = _pixel_sampler(net, [unit], steps=5).run(z0[row:row + 1])
        assert torch.allclose(alone.last_z, batched.last_z[row:row + 1], atol=1e-5)


def test_peak_gradient_scale_shrinks_the_step_as_the_gradient_falls(target):
    """gradient_scale=peak divides by the largest gradient a chain has met, so the step shrinks as
    the gradient of log p(y|x) does; the current scale keeps stepping lr per element."""
    net, _ = target
    z0 = torch.full((2, 3, 32, 32), 0.5)
    objectives = ObjectiveBatch([[Term("fc8", 0)], [Term("fc8", 5)]], {"fc8": 15}, mode="log_softmax")

    def last_move(scale, steps=12):
        settings = dict(lr=0.02, normalize_gradient=True, gradient_scale=scale, redirect_relu=0)
        before = Sampler(net, objectives, SamplerSettings(steps=steps - 1, **settings)).run(z0)
        after = Sampler(net, objectives, SamplerSettings(steps=steps, **settings)).run(z0)
        return (after.last_z - before.last_z).abs().flatten(1).mean(1), after

    current, _ = last_move("current")
    peak, faded = last_move("peak")
    assert torch.allclose(current, torch.full_like(current, 0.02), rtol=1e-3), current
    assert (peak < 0.5 * 0.02).all(), peak
    with torch.no_grad():
        start = objectives({"fc8": net.eval()(z0)})
    assert (faded.last_value > start + 0.5).all(), (start, faded.last_value)  # the chain still climbed
    with pytest.raises(ConfigError, match="gradient_scale='max'; expected one of current, peak"):
        SamplerSettings(gradient_scale="max")


def test_burn_in_takes_the_current_scale_before_the_peak_is_met(target):
    """With burn_in, the first steps are the current scale's; the peak is met after them, so later
    steps move at most lr per element, and the best iterate is kept from the mixing phase only."""
    net, _ = target
    z0 = torch.full((2, 3, 32, 32), 0.5)
    objectives = ObjectiveBatch([[Term("fc8", 0)], [Term("fc8", 5)]], {"fc8": 15}, mode="log_softmax")
    settings = dict(steps=12, lr=0.02, normalize_gradient=True, redirect_relu=0, record_every=1)
    current = Sampler(net, objectives, SamplerSettings(**settings)).run(z0)
    burnt = Sampler(net, objectives, SamplerSettings(gradient_scale="peak", burn_in=0.5, **settings)).run(z0)
    for step in range(7):  # 6 of the 12 steps burn in: the images after each are the current scale's
        assert torch.equal(burnt.frames[step], current.frames[step]), step
    assert not torch.equal(burnt.frames[-1], current.frames[-1])
    moves = [(b - a).abs().flatten(1).mean(1) for a, b in zip(burnt.frames[6:], burnt.frames[7:])]
    assert all((m <= 0.02 * (1 + 1e-3)).all() for m in moves), moves
    assert (burnt.best_step >= 6).all(), burnt.best_step
    with pytest.raises(ConfigError, match="burn_in=0.5 with gradient_scale='current'; expected burn_in=0"):
        SamplerSettings(burn_in=0.5)
    with pytest.raises(ConfigError, match=r"burn_in=1.0; expected a fraction of the steps in \[0, 1\)"):
        SamplerSettings(gradient_scale="peak", burn_in=1.0)


def test_views_average_the_objective_over_independently_transformed_images(target):
    """views=K reads K transformed copies of each image a step, each with its own roll, zoom and
    noise, and the objective is their mean (MACO's several random crops per step)."""
    net, _ = target
    z = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    objectives = ObjectiveBatch([[Term("fc8", 0)], [Term("fc8", 5)]], {"fc8": 15})
    settings = SamplerSettings(views=3, jitter=3, scale=0.1, image_noise=0.1)
    sampler = Sampler(net.eval(), objectives, settings)
    with torch.no_grad():
        values, first, _ = sampler._values(z, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2),
                                           sampler.taps)
        transforms, noise, by_hand = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), []
        for _ in range(3):
            view = robustness_transform(z, 3, 0.1, 0.0, transforms)
            view = view + 0.1 * torch.randn(view.shape, generator=noise)
            by_hand.append(objectives(sampler.taps(view)))
    assert torch.allclose(values, torch.stack(by_hand).mean(0), atol=1e-5), (values, by_hand)
    assert not torch.allclose(by_hand[0], by_hand[1])  # the views differ
    with pytest.raises(ConfigError, match="views=0; expected a positive integer"):
        SamplerSettings(views=0)


def test_dgn_am_keeps_codes_clipped_and_ppgn_noise_diversifies(target, small_priors):
    net, _ = target
    generator, stats, _ = load_generator(small_priors["generator"][1]["last_checkpoint"])
    upper = stats.quantile(0.99)
    objectives = ObjectiveBatch([[Term("fc8", 2)]] * 2, {"fc8": 15})
    z0 = stats.sample(1, torch.Generator().manual_seed(0)).repeat(2, 1)
    space = CodeSpace(generator, stats)
    dgn = Sampler(net, objectives, SamplerSettings(steps=20, lr=1.0, lr_end=0.1, normalize_gradient=True),
                  space=space, operators=[ClipCodes(upper), Decay(0.99)]).run(z0)
    assert dgn.last_z.min() >= 0 and (dgn.last_z <= upper + 1e-6).all()
    assert dgn.last.shape == (2, 3, 32, 32)
    assert torch.equal(dgn.last_z[0], dgn.last_z[1])  # no noise: identical starts stay identical
    noisy = Sampler(net, objectives, SamplerSettings(steps=20, lr=1.0, normalize_gradient=True, eps3=0.1),
                    space=space, operators=[ClipCodes(upper)]).run(z0)
    assert not torch.equal(noisy.last_z[0], noisy.last_z[1])
    with torch.no_grad():  # the sampler reads the net in eval mode; an earlier test left it training
        start = objectives({"fc8": net.eval()(generator(z0).clamp(0, 1))})
    assert dgn.best_value.mean() > start.mean()


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("visualize", overrides=list(overrides))


@pytest.mark.parametrize("method", ["pixel_noprior", "pixel", "pixel_fft", "pixel_maco", "dgn_am", "ppgn"])
def test_visualize_writes_grid_images_gifs_and_metrics(method, small_classifier, small_priors, tmp_path):
    cfg = _compose(f"method={method}", f"output_dir={tmp_path}",
                   f"target.ckpt={small_classifier[1]['best_checkpoint']}",
                   f"generator.ckpt={small_priors['generator'][1]['last_checkpoint']}",
                   f"prior.ckpt={small_priors['prior'][1]['last_checkpoint']}",
                   "units=[0,'blue star','1+2']", "seeds=2", "steps=12", "record_every=4", "device=cpu",
                   "evaluation.real_images=64")
    summary = visualize(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert len(metrics["results"]) == 6 and metrics["method"] == method
    first = metrics["results"][0]
    assert first["best"]["objective"] >= first["last"]["objective"]
    assert 0 <= first["last"]["probability"] <= 1 and 0 <= first["last"]["rank"] < 15
    for record in metrics["results"]:
        assert all((tmp_path / f).is_file() for f in record["files"].values())
    assert (tmp_path / "grid.png").is_file()
    assert len(list((tmp_path / "gifs").glob("*.gif"))) == 3
    assert not list(tmp_path.rglob(".*partial*"))
    # MACO writes its alpha masks beside the images and keeps its spectrum with the run
    assert ("alpha" in first["files"]) == (method == "pixel_maco")
    assert ("magnitude" in metrics) == (method == "pixel_maco") == (tmp_path / "maco_magnitude.pt").is_file()


@pytest.mark.parametrize("overrides, message", [
    (["layer=fc10"], "layer 'fc10' not found"),
    (["units=[15]"], "unit 15 out of range"),
    (["method.step.lr=-1"], "method.step.lr=-1"),
    (["method=dgn_am", "generator.ckpt=null"], "expected generator.ckpt"),
    (["method=ppgn", "prior.ckpt=null"], "needs prior.ckpt"),
    (["target.ckpt=GENERATOR"], "is a generator checkpoint; expected a classifier"),
    (["steps=0"], "steps=0; expected a positive integer"),
    (["method=pixel_maco", "method.space.magnitude=GENERATOR"], "holds a magnitude of NoneType; expected a spectrum"),
])
def test_visualize_bad_input_writes_nothing(overrides, message, small_classifier, small_priors, tmp_path):
    generator = small_priors["generator"][1]["last_checkpoint"]
    base = ["method=pixel", f"output_dir={tmp_path / 'out'}",
            f"target.ckpt={small_classifier[1]['best_checkpoint']}", f"generator.ckpt={generator}",
            "units=[0]", "seeds=1", "device=cpu", "evaluation.real_images=16"]
    cfg = _compose(*base, *[o.replace("GENERATOR", generator) for o in overrides])
    with pytest.raises((ConfigError, CheckpointError), match=message):
        visualize(cfg)
    assert not (tmp_path / "out").exists()


def test_visualize_cli_one_line_error(tmp_path, small_classifier):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "visualize.py"), "method=pixel",
                           f"target.ckpt={small_classifier[1]['best_checkpoint']}", "layer=conv9",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("featvis: error:")]
    assert len(errors) == 1 and "conv9" in errors[0], proc.stderr[-1500:]
    assert not Path(tmp_path / "run" / "metrics.json").exists()


def test_diversity_and_real_activations():
    from featvis.synthesis.evaluation import pairwise_diversity, real_activations
    from tests.checks import per_class_diversity

    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    assert pairwise_diversity(features, groups=2).tolist() == [5.0, 0.0]

    # per class, from the class's first items; a class with fewer items than asked is left out
    mixed = torch.tensor([[1.0, 1.0], [0.0, 0.0], [7.0, 7.0], [3.0, 4.0], [1.0, 1.0], [0.0, 8.0]])
    labels = torch.tensor([1, 0, 2, 0, 1, 0])
    assert per_class_diversity(mixed, labels, per_class=2).tolist() == [5.0, 0.0]
    with pytest.raises(ValueError, match="per_class=4.*at most 3"):
        per_class_diversity(mixed, labels, per_class=4)

    class Identity(torch.nn.Module):
        image_size = 2

        def forward(self, x):
            return x.flatten(1)

    images = torch.arange(20 * 12, dtype=torch.float).view(20, 3, 2, 2)
    batches = [(images[:10],), (images[10:],)]
    values, _, seen = real_activations(Identity(), [Term("flatten", 0)], batches)
    assert torch.equal(values[:, 0], images.flatten(1)[:, 0]) and len(seen) == 20 and seen.labels is None
    values, _, seen = real_activations(Identity(), [Term("flatten", 0)], batches, max_images=15)
    assert len(values) == len(seen) == 15 and torch.equal(seen.images, images[:15])


def test_grid_artifact_score_flags_a_checkerboard_and_not_real_images():
    from featvis.data import ShapesDataset
    from featvis.synthesis.evaluation import grid_artifact_score

    shapes = ShapesDataset(240, 64, split="val")
    real = torch.stack([shapes[i][0] for i in range(240)])
    rows, columns = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checkerboard = ((rows + columns) % 2).float()  # the up-convolution's period-2 print
    lines = ((rows % 4 == 0) | (columns % 4 == 0)).float()  # a grid of period 4
    for batch in (real[:120], real[120:]):
        assert grid_artifact_score(batch) < 1.6
        assert grid_artifact_score(batch + 0.01 * checkerboard) > 10
        assert grid_artifact_score(batch + 0.02 * lines) > 10
    assert grid_artifact_score(torch.full((4, 3, 32, 32), 0.5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="images of 2 px; expected at least 4 px"):
        grid_artifact_score(real[:2, :, :2, :2])


def test_reconstruction_transfer_reads_the_judge_on_real_images_and_on_their_reconstructions():
    from tests.checks import reconstruction_transfer

    class BrightestChannel(torch.nn.Module):  # a judge: the class is the channel with the largest mean
        image_size = 8

        def forward(self, x):
            return x.mean((2, 3))

    class FlatCodes:  # an encoder whose code is the image itself
        image_size = 8

        def code(self, x):
            return x.flatten(1)

    images = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = BrightestChannel()(images).argmax(1)
    labels[:3] = (labels[:3] + 1) % 3  # three images the judge gets wrong
    batches = [(images[:5], labels[:5]), (images[5:], labels[5:])]

    exact = reconstruction_transfer(lambda codes: codes.view(-1, 3, 8, 8), FlatCodes(), BrightestChannel(),
                                    batches, num_classes=3)
    assert exact["real"]["overall"] == exact["reconstruction"]["overall"] == pytest.approx(9 / 12)
    assert exact["images"] == 12

    def all_red(codes):
        return torch.zeros(len(codes), 3, 8, 8).index_fill_(1, torch.tensor([0]), 1.0)

    red = reconstruction_transfer(all_red, FlatCodes(), BrightestChannel(), batches, num_classes=3, max_images=10)
    assert red["images"] == 10
    assert red["reconstruction"]["per_class"][1:] == [0.0, 0.0]
    assert red["reconstruction"]["per_class"][0] == (1.0 if (labels[:10] == 0).any() else 0.0)
    assert red["reconstruction"]["overall"] == pytest.approx((labels[:10] == 0).float().mean().item())


def test_judge_misreadings_name_each_units_most_common_wrong_class():
    from tests.checks import judge_misreadings

    names = ["red circle", "blue circle", "blue square"]
    per_unit = [{"unit_index": 0, "judge_classes": [0, 0, 0, 0]},
                {"unit_index": 2, "judge_classes": [1, 2, 1, 0]},
                {"unit_index": 1, "judge_classes": [2, 2, 2, 2]}]
    assert judge_misreadings(per_unit, names) == ["blue square as blue circle 2/4",
                                                  "blue circle as blue square 4/4"]
    assert judge_misreadings(per_unit[:1], names) == []


def test_visualize_reports_faithfulness_with_a_judge(small_classifier, small_priors, small_judge, tmp_path):
    target = small_classifier[1]["best_checkpoint"]
    cfg = _compose("method=dgn_am", f"output_dir={tmp_path}", f"target.ckpt={target}",
                   f"generator.ckpt={small_priors['generator'][1]['last_checkpoint']}",
                   f"judge.ckpt={small_judge[1]['best_checkpoint']}", "units=[0,4,8]", "seeds=3",
                   "steps=10", "gif=false", "device=cpu", "evaluation.real_images=120", "image_size=32")
    evaluation = visualize(cfg)["evaluation"]
    assert 0 <= evaluation["judge_transfer"] <= 1 and 0 <= evaluation["beats_real_top1"] <= 1
    assert evaluation["diversity"] >= 0 and evaluation["kid_mean"] == evaluation["kid_mean"]  # not NaN
    assert evaluation["fid"] is None  # 9 syntheses in a 128-d feature space: no covariance
    # the seeds' spread beside that of 3 real images of each unit's class, in the same judge space
    assert evaluation["real_diversity"] > 0 and all(u["real_diversity"] > 0 for u in evaluation["per_unit"])
    assert evaluation["diversity_vs_real"] == pytest.approx(evaluation["diversity"] / evaluation["real_diversity"])
    row = evaluation["per_unit"][0]
    assert row["unit"] == "0 red circle" and row["real_top1"] >= row["real_top9_mean"]
    for unit in evaluation["per_unit"]:  # the judge's reading of each seed is what transfer counts
        assert len(unit["judge_classes"]) == 3
        assert unit["judge_transfer"] == pytest.approx(
            sum(c == unit["unit_index"] for c in unit["judge_classes"]) / 3)
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]  # evaluation.path_layers=auto
    assert list(evaluation["path_similarity"]) == layers == list(row["path_similarity"])
    assert all(-1 <= v <= 1 for v in [*evaluation["path_similarity"].values(), *row["path_similarity"].values()])
    assert -1 <= evaluation["real_path_similarity_mean"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["evaluation"] == evaluation
    same = _compose("method=pixel", f"output_dir={tmp_path / 'same'}", f"target.ckpt={target}",
                    f"judge.ckpt={target}", "units=[0]", "seeds=1", "device=cpu")
    with pytest.raises(ConfigError, match="has the target's own weights"):
        visualize(same)


def test_speed_switches_reach_the_same_objective(target):
    net, _ = target
    z0 = torch.full((2, 3, 32, 32), 0.5)
    plain = _pixel_sampler(net, [3, 6], steps=8).run(z0)
    objectives = ObjectiveBatch([[Term("fc8", u)] for u in (3, 6)], {"fc8": 15})
    fast = Sampler(net, objectives, SamplerSettings(steps=8, lr=0.02, normalize_gradient=True),
                   autocast=True, channels_last=True).run(z0)
    # bf16 gradients take normalized steps along slightly different paths: compare what they reach.
    assert (fast.best_value > 0.8 * plain.best_value).all(), (fast.best_value, plain.best_value)
    assert fast.last.dtype == torch.float32 and fast.last.is_contiguous()


def test_robustness_transform_and_fourier_images_pass_gradients():
    from featvis.synthesis.parametrizations import FourierImage
    from featvis.synthesis.priors import robustness_transform

    fourier = FourierImage(32)
    z = fourier.initial(2, torch.Generator().manual_seed(0)).requires_grad_(True)
    images = fourier(z)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    moved = robustness_transform(images, 2, 0.1, 10.0, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and not torch.equal(moved, images)
    moved[:, 0].mean().backward()
    assert z.grad.abs().sum() > 0


def test_a_torchvision_model_as_target(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), weights)
    base = [f"output_dir={tmp_path / 'out'}", "target.torchvision=resnet18", f"target.weights={weights}",
            "target.image_size=64", "target.num_classes=10", "method=pixel", "seeds=1", "steps=3",
            "gif=false", "evaluation.real_images=0", "device=cpu"]
    summary = visualize(_compose(*base, "layer=layer3", "units=[5]", "spatial=mean"))
    assert summary["results"][0]["unit"] == "5" and (tmp_path / "out" / "grid.png").is_file()
    with pytest.raises(ConfigError, match="'layer9' not found in ResNet; expected one of .*'layer4'"):
        visualize(_compose(*base, "layer=layer9", "units=[0]"))
    with pytest.raises(ConfigError, match="'resnet999' is not a torchvision model"):
        visualize(_compose(*base, "target.torchvision=resnet999"))


def test_the_readmes_python_example_runs(small_classifier, small_priors, small_judge, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("### From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    checkpoints = {"classifier/<run>": small_classifier[1]["best_checkpoint"],
                   "classifier/<other run>": small_judge[1]["best_checkpoint"],
                   "generator/<run>": small_priors["generator"][1]["last_checkpoint"],
                   "prior/<run>": small_priors["prior"][1]["last_checkpoint"]}
    for name, path in checkpoints.items():
        placeholder = f'"outputs/{name}/checkpoints/last.ckpt"'
        assert placeholder in code, placeholder
        code = code.replace(placeholder, repr(str(path)))
    monkeypatch.chdir(ROOT.parent)  # the example does not depend on the working directory
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    found, scored = namespace["found"], namespace["scored"]
    assert namespace["maco"].result.alpha.shape == (2, 1, 32, 32)
    assert found.images.shape == (8, 3, 32, 32) and 0 <= float(found.images.min()) <= float(found.images.max()) <= 1
    assert [r["unit"] for r in found.rows[::4]] == ["red circle", "3+7"]
    assert 0 <= scored.evaluation["judge_transfer"] <= 1 and len(scored.rows) == 4
    assert all("judge_correct" in r for r in scored.rows)
    assert "torch.Size([8, 3, 32, 32])" in capsys.readouterr().out


def test_a_method_is_a_space_a_prior_term_and_operators(small_priors):
    from featvis.synthesis.methods import load_method, method_config
    from featvis.synthesis.priors import DAEPrior, ImageOperators, PriorTerm
    from featvis.synthesis.spaces import FourierSpace, PixelSpace

    checkpoints = {"generator_ckpt": small_priors["generator"][1]["last_checkpoint"],
                   "prior_ckpt": small_priors["prior"][1]["last_checkpoint"], "image_size": 32}

    def method(name: str, *changes: str):
        return load_method(method_config(name, *changes), **checkpoints)

    dgn, ppgn, pixel, fft = (method(n) for n in ("dgn_am", "ppgn", "pixel", "pixel_fft"))
    assert isinstance(dgn.space, CodeSpace) and dgn.prior is None
    assert [type(op) for op in dgn.operators] == [ClipCodes, Decay]
    assert isinstance(ppgn.prior, DAEPrior) and isinstance(ppgn.prior, PriorTerm)
    assert ppgn.prior.dae in ppgn.modules()[1].modules()  # the DAE moves and freezes with its term
    assert isinstance(pixel.space, PixelSpace) and [type(op) for op in pixel.operators] == [ImageOperators]
    assert isinstance(fft.space, FourierSpace) and fft.operators == []
    # A seed's start is the same for every unit, and the space renders it as an image.
    starts = dgn.start(units=2, seeds=3)
    assert torch.equal(starts[:3], starts[3:]) and not torch.equal(starts[0], starts[1])
    assert dgn.space(starts).shape == (6, 3, 32, 32)
    assert torch.equal(pixel.start(1, 2)[1:], PixelSpace(32).start(torch.Generator().manual_seed(1)))
    for change, message in (("operators.decay.factor=0.0", r"method.operators.decay.factor=0.0; expected a value in \(0, 1\]"),
                            ("operators.clip.quantile=1.5", r"method.operators.clip.quantile=1.5; expected a value in \(0, 1\]"),
                            ("space.init=ones", r"method.space.init='ones'; expected stats, zeros or multifaceted"),
                            ("space._target_=wavelet", r"method.space._target_='wavelet' cannot be built"),
                            ("decay=0.5", r"method.decay is now method.operators.decay.factor")):
        with pytest.raises(ConfigError, match=message):
            method("dgn_am", change)
    misspelt = method_config("pixel")  # a config from Python, not composed (nothing checks its keys before)
    misspelt["operators"]["image"]["blur_evry"] = 3
    with pytest.raises(ConfigError, match=r"method.operators.image.blur_evry: .*ImageOperators takes no such argument"):
        load_method(misspelt, **checkpoints)


def test_the_activation_path_check_scores_real_images_as_its_ceiling(target):
    from featvis.data import ShapesDataModule
    from featvis.synthesis.evaluation import path_similarity, real_activations, spearman

    assert spearman(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.tensor([10.0, 20.0, 30.0])).tolist() \
        == pytest.approx([1.0, -1.0])
    net, _ = target
    data = ShapesDataModule(image_size=32, val_size=150, batch_size=50)
    data.setup("validate")
    images, labels = (torch.cat(parts) for parts in zip(*data.val_dataloader()))
    # The "syntheses" of class unit 3 are the hold-out half's images of class 3: they score what
    # the ceiling scores.  Unit 5 is read by its top-k real images instead of its class.
    held = images[(torch.arange(len(labels)) % 2 == 1) & (labels == 3)]
    terms, layers = [Term("fc8", 3)], ["conv2", "fc7"]
    values, channels, pool = real_activations(net.eval(), terms, data.val_dataloader(), layers=layers)
    found = path_similarity(net, terms, held, len(held), values, channels, pool.labels, [True])
    assert found["by_layer"] == pytest.approx(found["real_by_layer"]) and found["by_layer"]["fc7"] > 0.5
    grey = torch.full((2, 3, 32, 32), 0.5)
    values, channels, _ = real_activations(net, [Term("conv2", 5)], pool, layers=layers)  # the same pool
    other = path_similarity(net, [Term("conv2", 5)], grey, 2, values, channels, None, [False])
    assert set(other["per_unit"][0]) == set(layers) and other["real_by_layer"]["fc7"] > other["by_layer"]["fc7"]


def test_the_diversity_term_pushes_a_units_seeds_apart(target):
    from featvis.nets.layers import activations
    from featvis.synthesis.objectives import gram_similarity

    net, _ = target
    acts = torch.randn(4, 3, 5, 5)
    same = torch.cat([acts[:1], acts[:1], acts[2:]])
    assert gram_similarity(same, 2)[:2].tolist() == pytest.approx([1.0, 1.0])
    assert (gram_similarity(acts, 2) < 1).all() and gram_similarity(acts, 2).shape == (4,)

    def similarity(diversity: float) -> float:
        found = featvis.synthesize(net, [2, 9], featvis.method_config("pixel_noprior", f"objective.diversity={diversity}"),
                                   seeds=3, steps=25, spatial="mean")
        return float(gram_similarity(activations(net, found.images, ["conv3"])["conv3"], 3).mean())

    assert similarity(20.0) < similarity(0.0) - 0.01
    with pytest.raises(ConfigError, match=r"method.objective.diversity_layer='conv9' is not available"):
        featvis.synthesize(net, [2], featvis.method_config("pixel", "objective.diversity=1.0", "objective.diversity_layer=conv9"), seeds=2)
    with pytest.raises(ConfigError, match=r"method.objective.diversity=-1.0; expected a non-negative number"):
        featvis.synthesize(net, [2], featvis.method_config("pixel", "objective.diversity=-1.0"), seeds=2)


def test_multifaceted_starts_are_the_cluster_medoids_of_each_units_top_real_codes(target, small_priors):
    from featvis.data import ShapesDataModule
    from featvis.synthesis.methods import units_of
    from featvis.synthesis.spaces import kmeans, multifaceted_starts
    from featvis.synthesis.synthesize import unit_values

    noise = torch.randn(40, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    blobs = torch.cat([noise[:30] + 5, noise[30:] - 5])
    assert torch.allclose(kmeans(blobs, 2), torch.tensor([[5.0, 5.0], [-5.0, -5.0]]), atol=0.1)  # the larger first
    net, record = target
    data = ShapesDataModule(image_size=32, val_size=150, batch_size=50)
    data.setup("validate")
    generator = small_priors["generator"][1]["last_checkpoint"]
    method = featvis.load_method(featvis.method_config("dgn_am", "space.init=multifaceted", "space.top_k=20"),
                                 generator, None, 32)
    found = featvis.synthesize(net, [0, 4], method, class_names=record["class_names"], seeds=3, steps=3,
                               real=data.val_dataloader(), evaluation=False, record_every=1)
    assert len(found.rows) == 6 and found.images.shape == (6, 3, 32, 32)
    # The chains start at the members nearest the cluster centres of each unit's top real codes:
    # per unit, 3 distinct real codes, other than the other unit's (the first frame is G of the starts).
    units, _ = units_of(net, [0, 4], "fc8", record["class_names"])
    values, images = unit_values(net, units, data.val_dataloader(), "center", 1000)
    starts = multifaceted_starts(method.space, values, images, seeds=3, top_k=20)
    assert starts.shape == (6, method.space.stats.mean.numel()) and (starts >= 0).all()
    assert torch.cdist(starts[:3], starts[3:]).min() > 0 and torch.pdist(starts[:3]).min() > 0
    with torch.no_grad():
        real_codes = method.space.encoder.code(images)
    exact = torch.cdist(starts, real_codes, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(1).values.max() < 1e-3  # codes ~10 apart
    with torch.no_grad():
        first = method.space(starts).clamp(0, 1)
    assert torch.allclose(found.result.frames[0], first, atol=1e-5)
    with pytest.raises(ConfigError, match="method.space.init=multifaceted needs real images"):
        featvis.synthesize(net, [0], method, seeds=2, steps=1)


def test_synthesize_leaves_a_training_network_as_it_found_it(target):
    from featvis.data import ShapesDataModule

    net, record = target
    net.train()  # e.g. the FeatureEvolution callback's network, or a user's in the middle of training
    data = ShapesDataModule(image_size=32, val_size=60, batch_size=30)
    data.setup("validate")
    buffers = [b.clone() for b in net.buffers()]
    modes, flags = [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]
    rng = torch.get_rng_state()
    found = featvis.synthesize(net, [0, 4], "pixel", class_names=record["class_names"], seeds=2, steps=3,
                               real=data.val_dataloader(), path_layers=["conv2"])
    assert found.evaluation["path_similarity"].keys() == {"conv2"}
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))  # BN statistics untouched
    assert [m.training for m in net.modules()] == modes and [p.requires_grad for p in net.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng)


def test_maco_moves_only_the_phase_of_the_real_images_spectrum(tmp_path):
    from featvis.data import ShapesDataModule
    from featvis.synthesis.parametrizations import magnitude_spectrum
    from featvis.synthesis.spaces import MacoSpace

    data = ShapesDataModule(image_size=32, train_size=64, val_size=64, batch_size=32)
    data.setup("validate")
    magnitude = magnitude_spectrum(data.val_dataloader(), 32)
    assert magnitude.shape == (3, 32, 17)
    # The magnitude does not depend on where things are: rolled images have the same spectrum.
    rolled = [(torch.roll(images, (5, -3), (2, 3)), labels) for images, labels in data.val_dataloader()]
    assert torch.allclose(magnitude_spectrum(rolled, 32), magnitude, rtol=1e-4, atol=1e-5)
    space = MacoSpace(magnitude)
    starts = torch.cat([space.start(torch.Generator().manual_seed(k)) for k in range(2)])
    images = space(starts)
    assert images.shape == (2, 3, 32, 32) and 0 < images.min() and images.max() < 1
    assert (images[0] - images[1]).abs().mean() > 0.02  # the phase decides the image ...
    # Standardized (the published MACO), an image does not depend on the magnitude's scale.
    standardized = [MacoSpace(scale * magnitude, standardize=True)(starts) for scale in (0.1, 10.0)]
    assert torch.allclose(*standardized, atol=1e-5)
    # ... and never the magnitude (columns 0 and S/2 of a real FFT keep only part of their phase)
    spectra = torch.fft.rfft2(space.decorrelated(starts), norm="ortho").abs()[..., 1:16]
    assert torch.allclose(spectra, magnitude[..., 1:16].expand_as(spectra), rtol=1e-3, atol=1e-4)
    # The spectrum a run saves is what method.space.magnitude reads back, at the size it was made for.
    from featvis.io import save_tensors
    from featvis.synthesis.spaces import maco_magnitude

    saved = save_tensors({"magnitude": magnitude}, tmp_path / "maco_magnitude.pt")  # as earlier versions wrote it
    assert torch.equal(maco_magnitude(str(saved), None, 32)[0], magnitude) and maco_magnitude(str(saved), None, 32)[1] is None
    with pytest.raises(ConfigError, match="real_mean=true, and method.space.magnitude=.* holds no mean colour"):
        MacoSpace.from_real(32, None, str(saved), real_mean=True)
    # Centred on the real images' mean colour (shapes: mostly a dark background) rather than mid-grey.
    colour = maco_magnitude(None, data.val_dataloader(), 32)[1]
    images_of = torch.cat([images for images, _ in data.val_dataloader()])
    assert torch.allclose(colour, images_of.mean((0, 2, 3)), atol=1e-4)
    centred = MacoSpace.from_real(32, data.val_dataloader(), real_mean=True)(starts)
    assert torch.allclose(centred.mean((0, 2, 3)), colour, atol=0.08) and not torch.allclose(images.mean((0, 2, 3)), colour, atol=0.08)
    with pytest.raises(ConfigError, match=r"magnitude of \(3, 32, 17\); expected a spectrum of shape \(3, 64, 33\)"):
        maco_magnitude(str(saved), None, 64)
    with pytest.raises(ConfigError, match="needs the magnitude spectrum of real images"):
        maco_magnitude(None, None, 32)
    with pytest.raises(ConfigError, match="the data gave none"):
        maco_magnitude(None, [], 32)


def test_transparency_marks_where_the_unit_looks(small_classifier):
    """A conv unit at the centre reads a small patch: its alpha mask is bright there only."""
    from featvis.synthesis.methods import method_config

    target, _ = load_classifier(small_classifier[1]["best_checkpoint"])
    method = method_config("pixel_noprior", "step.transparency=true", "step.jitter=0")
    found = featvis.synthesize(target, [3], method, layer="conv2", seeds=2, steps=5)
    alpha = found.result.alpha
    assert alpha.shape == (2, 1, 32, 32) and alpha.min() >= 0 and alpha.max() == 1
    centre = torch.zeros(32, 32, dtype=torch.bool)
    centre[8:24, 8:24] = True
    assert alpha[..., centre].mean() > 3 * alpha[..., ~centre].mean()
    # conv2's centre unit of this net reads rows and columns 2 to 26: nothing outside is marked
    assert alpha[..., :2, :].max() == alpha[..., 27:, :].max() == alpha[..., :2].max() == alpha[..., 27:].max() == 0
    assert featvis.synthesize(target, [3], "pixel_noprior", layer="conv2", seeds=1, steps=2).result.alpha is None
