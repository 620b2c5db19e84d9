"""Generator and DAE priors: networks, code statistics, the Gaussian score check, training jobs."""

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image

from featvis.checkpoints import (check_same_code, load_classifier, load_generator, load_prior,
                                 read_checkpoint)
from tests.checks import dae_gaussian_score_check
from featvis.errors import CheckpointError, ConfigError
from featvis.nets import CodeStatistics, Discriminator, Encoder, Generator
from featvis.nets.adapters import fit_images
from featvis.jobs.train import train
from featvis.training import linear_decay
from featvis.training.losses import Comparator, GanBalance, feature_loss, spectral_loss

from .conftest import SMALL_PRIOR, compose_in

def test_generator_sizes_follow_the_stages():
    tiny = Generator(1024)
    assert tiny.image_size == 64 and tiny(torch.rand(2, 1024)).shape == (2, 3, 64, 64)
    deepsim = Generator(4096, fc_dims=[4096, 4096], start_channels=256,
                        stages=[[256, 512], [256, 256], [128, 128], [64, 0], [32, 0], [16, 0]])
    assert deepsim.image_size == 256
    with pytest.raises(ConfigError, match="generator.stages"):
        Generator(16, stages=[[8]])


def test_generator_nearest_upsampling_keeps_sizes_and_spec():
    g = Generator(32, fc_dims=[16], start_channels=8, stages=[[8, 8], [4, 0]], upsample="nearest")
    assert g(torch.rand(2, 32)).shape == (2, 3, 16, 16) and g.spec["upsample"] == "nearest"
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert Generator(**{k: v for k, v in g.spec.items() if k != "arch"}).spec == g.spec
    with pytest.raises(ConfigError, match="generator.upsample"):
        Generator(32, upsample="bicubic")


def test_generator_bilinear_upsampling_and_group_norm_behave_alike_in_train_and_eval():
    g = Generator(32, fc_dims=[16], start_channels=8, stages=[[12, 8], [4, 0]], upsample="bilinear",
                  norm="group", to_rgb="up")
    codes = torch.rand(3, 32)
    out = g.train()(codes)
    assert out.shape == (3, 3, 32, 32) and g.spec["norm"] == "group" and g.spec["upsample"] == "bilinear"
    norms = [m for m in g.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [n.num_channels for n in norms] == [12, 8, 4] and [n.num_groups for n in norms] == [4, 8, 4]
    assert torch.allclose(g.eval()(codes), out)  # no running statistics: an EMA copy needs none
    assert Generator(**{k: v for k, v in g.spec.items() if k != "arch"}).spec == g.spec
    assert "norm" not in Generator(32).spec  # older checkpoints keep loading
    with pytest.raises(ConfigError, match=r"generator.norm='batch'; expected one of \['none', 'group'\]"):
        Generator(32, norm="batch")


def test_generator_noise_is_fresh_in_training_and_fixed_in_eval():
    settings = dict(fc_dims=[16], start_channels=8, stages=[[12, 8], [4, 0]], upsample="bilinear", norm="group")
    torch.manual_seed(0)
    plain = Generator(32, **settings)
    torch.manual_seed(0)
    noisy = Generator(32, **settings, noise=True)
    codes = torch.rand(3, 32)
    # the scales start at 0 and the fixed maps use their own random stream: at initialization
    # the same G as without noise
    assert torch.equal(noisy.eval()(codes), plain.eval()(codes))
    assert sorted(n for n, _ in noisy.deconv.named_children() if n.endswith("_noise")) == [
        "conv0_noise", "up0_noise", "up1_noise"]
    for module in noisy.modules():
        if hasattr(module, "scale"):
            torch.nn.init.constant_(module.scale, 0.5)
    assert torch.equal(noisy.eval()(codes), noisy(codes))  # G(h) is a function of h for the samplers
    noisy.train()
    assert not torch.allclose(noisy(codes), noisy(codes))
    copy_of = Generator(**{k: v for k, v in noisy.spec.items() if k != "arch"})
    copy_of.load_state_dict(noisy.state_dict())  # the fixed maps are rebuilt, not stored
    assert noisy.spec["noise"] is True and torch.equal(copy_of.eval()(codes), noisy.eval()(codes))
    assert "noise" not in plain.spec  # older checkpoints keep loading


@pytest.mark.parametrize("code_dim", [0, 24])
def test_discriminator_with_and_without_code_branch(code_dim):
    d = Discriminator(32, code_dim=code_dim, channels=[8, 16])
    code = torch.rand(3, code_dim) if code_dim else None
    assert d(torch.rand(3, 3, 32, 32), code).shape == (3,)


def test_code_statistics_match_torch():
    codes = torch.rand(1000, 7) * torch.arange(1, 8)
    stats = CodeStatistics(7).fit(codes)
    assert torch.allclose(stats.mean, codes.mean(0)) and torch.allclose(stats.std, codes.std(0))
    assert torch.allclose(stats.quantile(0.99), codes.quantile(0.99, dim=0))
    drawn = stats.sample(500, torch.Generator().manual_seed(0))
    assert drawn.shape == (500, 7) and drawn.min() >= 0
    with pytest.raises(ConfigError, match="code quantile 0.42"):
        stats.quantile(0.42)


def test_dae_score_points_where_the_analytic_gaussian_score_points():
    result = dae_gaussian_score_check(dim=8, samples=8000, epochs=8, sigma=0.5)
    assert result["cosine_to_true_score"] >= 0.9, result


@pytest.mark.parametrize("ratios, expected", [
    ([1.0], (True, True)),
    ([0.05], (False, True)),         # D far ahead: pause D
    ([0.05, 0.3], (False, True)),    # hysteresis: stays paused between 0.1 and 0.5
    ([0.05, 0.8], (True, True)),     # resumes above 0.5
    ([20.0], (True, False)),         # D lost: pause G
    ([20.0, 2.0], (True, True)),
])
def test_gan_balance_schedule(ratios, expected):
    balance = GanBalance()
    for ratio in ratios:
        balance.update(d_loss=ratio, g_adversarial=1.0)
    assert (balance.train_d, balance.train_g) == expected


def test_encoder_is_frozen_but_passes_gradients(small_classifier):
    net, _ = load_classifier(small_classifier[1]["best_checkpoint"])
    encoder = Encoder(net.train())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = encoder(images)
    assert out["code"].shape == (2, 128) and out["logits"].shape == (2, 15)
    out["features"].sum().backward()
    assert images.grad.abs().sum() > 0


def test_comparator_reads_several_layers_frozen_and_weighs_them(small_classifier):
    net, _ = load_classifier(small_classifier[1]["best_checkpoint"])
    encoder = Encoder(net)
    comparator = Comparator(encoder, {"conv2": 2.0, "pool5": 1.0})
    comparator.train()
    assert not any(m.training for m in comparator.modules())
    assert not any(p.requires_grad for p in comparator.parameters())
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    out, reference = comparator(images), encoder(images)
    assert torch.allclose(out["code"], reference["code"]) and torch.allclose(out["logits"], reference["logits"])
    assert torch.allclose(out["features"]["pool5"], reference["features"])
    other = comparator(torch.rand(2, 3, 32, 32))
    expected = (2.0 * torch.nn.functional.mse_loss(out["features"]["conv2"], other["features"]["conv2"])
                + torch.nn.functional.mse_loss(out["features"]["pool5"], other["features"]["pool5"]))
    loss = feature_loss(out["features"], other["features"], comparator.weights)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert images.grad.abs().sum() > 0


def test_comparator_adds_other_networks_features_with_the_same_weights(small_classifier):
    from featvis.checkpoints import build_net
    from featvis.nets.layers import activations

    net, record = load_classifier(small_classifier[1]["best_checkpoint"])
    torch.manual_seed(1)
    second = build_net(record["net"]).eval()  # another network of the same layout, other weights
    comparator = Comparator(Encoder(net), {"conv2": 2.0, "pool5": 1.0}, [second])
    assert comparator.weights == {"conv2": 2.0, "pool5": 1.0, "conv2@1": 2.0, "pool5@1": 1.0}
    assert not any(p.requires_grad for p in comparator.parameters())
    comparator.train()
    assert not second.training

    images, others = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = comparator(images)
    reference = activations(second, images, ["conv2", "pool5"])
    assert torch.allclose(out["features"]["pool5@1"], reference["pool5"])
    assert not torch.allclose(out["features"]["pool5@1"], out["features"]["pool5"])
    loss = feature_loss(out["features"], comparator(others)["features"], comparator.weights)
    alone = Comparator(Encoder(net), {"conv2": 2.0, "pool5": 1.0})
    loss_alone = feature_loss(alone(images)["features"], alone(others)["features"], alone.weights)
    second_only = activations(second, others, ["conv2", "pool5"])
    expected = loss_alone + (2.0 * torch.nn.functional.mse_loss(reference["conv2"], second_only["conv2"])
                             + torch.nn.functional.mse_loss(reference["pool5"], second_only["pool5"]))
    assert torch.allclose(loss, expected)

    bigger = build_net({**record["net"], "image_size": 64})
    with pytest.raises(ConfigError, match="comparator 1 takes 64 px images; expected the encoder's 32 px"):
        Comparator(Encoder(net), {"pool5": 1.0}, [bigger])


def test_spectral_loss_charges_missing_high_frequencies_and_passes_gradients_to_the_fakes():
    torch.manual_seed(0)

    def textured(n: int) -> torch.Tensor:  # images with power at every frequency, like shapes' backgrounds
        return torch.nn.functional.avg_pool2d(torch.rand(n, 3, 40, 40), 9, 1) + 0.1 * torch.rand(n, 3, 32, 32)

    real, other = textured(16), textured(16)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(real, (2, 2, 2, 2), mode="replicate"), 5, 1)
    assert spectral_loss(real, real) == 0
    # A blurred copy is closer to the real batch pixel for pixel than another batch is, but has
    # lost its fine texture: the log spectrum charges that far more than the batches' spread.
    mse = torch.nn.functional.mse_loss
    assert mse(blurred, real) < mse(other, real)
    assert spectral_loss(blurred, real) > 20 * spectral_loss(other, real)
    fake = blurred.clone().requires_grad_(True)
    target = real.clone().requires_grad_(True)
    spectral_loss(fake, target).backward()
    assert fake.grad.abs().sum() > 0 and target.grad is None


@pytest.fixture(scope="module")
def priors(small_priors):
    return small_priors


def test_linear_decay_holds_then_falls_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = linear_decay(optimizer, total_steps=8, fraction=0.5)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert optimizer.param_groups[0]["lr"] == 0
    with pytest.raises(ValueError, match=r"fraction=0; expected a number in \(0, 1\]"):
        linear_decay(optimizer, total_steps=8, fraction=0)
    with pytest.raises(ValueError, match="total_steps=inf; expected a finite number of steps"):
        linear_decay(optimizer, total_steps=float("inf"))


def test_generator_job_writes_a_self_describing_checkpoint(priors, small_classifier):
    cfg, result = priors["generator"]
    generator, stats, record = load_generator(result["last_checkpoint"])
    assert record["kind"] == "generator" and record["code_dim"] == 128 and record["ema"]
    assert record["encoder"]["checkpoint"] == small_classifier[1]["best_checkpoint"]
    assert record["encoder"]["code_layer"] == "fc6" and record["encoder"]["image_size"] == 32
    assert generator(stats.sample(2)).shape == (2, 3, 32, 32)
    assert stats.count == 256 and stats.quantile(0.99).max() > 0
    checkpoint = read_checkpoint(result["last_checkpoint"])
    assert len(checkpoint["optimizer_states"]) == 2 and "gan_balance" in checkpoint
    assert 0 <= result["metrics"]["val/agreement"] <= 1
    assert cfg.task.module.loss_weights.spectral > 0 and result["metrics"]["train/loss_spectral"] > 0
    assert result["metrics"]["val/loss_spectral"] > 0
    # one epoch of 4 batches: global_step counts batches (one counted optimizer step each), not G and D steps
    assert checkpoint["global_step"] == 256 // 64
    samples = sorted((Path(cfg.output_dir) / "samples").glob("step*.png"))
    assert [p.name for p in samples] == ["step0000002.png", "step0000004.png"], "every 2 steps and at the end"
    # GeneratorModule.sample_grid: rows of 8 real images, their G(E(x)) and G(random codes), 32 px + padding
    assert Image.open(samples[-1]).size == (8 * 34 + 2, 3 * 34 + 2)


def test_generator_resumes_with_its_optimizers_and_balance(priors, tmp_path):
    cfg, result = priors["generator"]
    before = read_checkpoint(result["last_checkpoint"])
    cfg = copy.deepcopy(cfg)  # the run is shared with other tests: resume into a new dir
    cfg.output_dir = str(tmp_path)
    cfg.trainer.max_epochs = 2
    cfg.ckpt_path = result["last_checkpoint"]
    after = read_checkpoint(train(cfg)["last_checkpoint"])
    assert after["epoch"] > before["epoch"]
    assert after["global_step"] == 2 * before["global_step"]
    g_steps = [s["state"][0]["step"].item() for s in (before["optimizer_states"][0], after["optimizer_states"][0])]
    assert g_steps[1] == 2 * g_steps[0] > 0, g_steps  # Adam state carried on, not restarted


def test_generator_counts_one_step_a_batch_whichever_net_the_balance_pauses(small_classifier, tmp_path):
    # G pauses after the first batch (r > pause_g always): D alone steps 3 batches, still counted
    pause_g = ["task.module.balance={pause_d:-1.0,resume_d:-1.0,pause_g:-1.0}"]
    result = train(compose_in(tmp_path, "task=generator", f"encoder.ckpt={small_classifier[1]['best_checkpoint']}",
                              *SMALL_PRIOR, *pause_g))
    checkpoint = read_checkpoint(result["last_checkpoint"])
    adam_steps = [s["state"][0]["step"].item() for s in checkpoint["optimizer_states"]]
    assert checkpoint["global_step"] == 256 // 64 and adam_steps == [1, 4], adam_steps


def test_generator_job_with_another_comparator_network(small_classifier, small_judge, tmp_path):
    encoder = small_classifier[1]["best_checkpoint"]
    other = small_judge[1]["best_checkpoint"]
    small = [o for o in SMALL_PRIOR if not o.startswith("data.train_size")] + ["data.train_size=64"]
    result = train(compose_in(tmp_path / "g", "task=generator", f"encoder.ckpt={encoder}", *small,
                              f"task.comparators=[{other}]"))
    state = read_checkpoint(result["last_checkpoint"])["state_dict"]
    reference, _ = load_classifier(other)
    assert torch.equal(state["comparator.others.0.conv1.conv.weight"], reference.state_dict()["conv1.conv.weight"])
    # performance.channels_last (the default) trained every network in NHWC layout
    assert state["generator.deconv.up0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert state["comparator.others.0.conv1.conv.weight"].is_contiguous(memory_format=torch.channels_last)
    generator, _, _ = load_generator(result["last_checkpoint"])  # readers still see a plain generator
    assert generator.code_dim == 128 and generator.deconv.up0.weight.is_contiguous()

    missing = tmp_path / "missing.ckpt"
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        train(compose_in(tmp_path / "m", "task=generator", f"encoder.ckpt={encoder}", *small,
                         f"task.comparators=[{missing}]"))


def test_generator_job_steps_both_learning_rate_schedules(small_classifier, tmp_path):
    encoder = small_classifier[1]["best_checkpoint"]
    small = [o for o in SMALL_PRIOR if not o.startswith("data.train_size")] + ["data.train_size=128"]
    decay = "task.module.scheduler={_target_:featvis.training.linear_decay,_partial_:true,fraction:0.5}"
    result = train(compose_in(tmp_path, "task=generator", f"encoder.ckpt={encoder}", *small, decay))
    schedules = read_checkpoint(result["last_checkpoint"])["lr_schedulers"]
    # one epoch of 2 batches of 64: G's and D's rates both stepped twice, down to 0 at the end
    assert [s["last_epoch"] for s in schedules] == [2, 2]
    assert [s["_last_lr"] for s in schedules] == [[0.0], [0.0]]


def test_prior_job_and_code_compatibility(priors):
    _, result = priors["prior"]
    dae, stats, record = load_prior(result["last_checkpoint"])
    assert record["kind"] == "prior" and record["code_dim"] == 128 == dae.code_dim
    assert dae.score(stats.sample(3)).shape == (3, 128)
    _, _, generator_record = load_generator(priors["generator"][1]["last_checkpoint"])
    check_same_code(generator_record, record)
    other = dict(record, encoder=dict(record["encoder"], code_dim=64))
    with pytest.raises(CheckpointError, match="size 64 does not match the generator's fc6 of size 128"):
        check_same_code(generator_record, other)


def test_wrong_kinds_and_missing_encoder_are_clear(priors, small_classifier, tmp_path):
    with pytest.raises(CheckpointError, match="is a classifier checkpoint; expected a generator"):
        load_generator(small_classifier[1]["best_checkpoint"])
    with pytest.raises(CheckpointError, match="is a generator checkpoint; expected a prior"):
        load_prior(priors["generator"][1]["last_checkpoint"])
    with pytest.raises(ConfigError, match="encoder.ckpt is not set"):
        train(compose_in(tmp_path, "task=generator", *SMALL_PRIOR))
    encoder = small_classifier[1]["best_checkpoint"]
    with pytest.raises(ConfigError, match="data.image_size=64 but the encoder"):
        train(compose_in(tmp_path, "task=prior", f"encoder.ckpt={encoder}", *SMALL_PRIOR, "image_size=64"))


def test_deepsim_generator_and_caffenet_encoder_from_torchvision_weights(tmp_path):
    import torchvision

    from featvis.jobs.train import load_encoder

    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    cfg = compose_in(tmp_path, "task=generator", "encoder=caffenet", f"encoder.weights={weights}",
                     "generator=deepsim", "dae=ppgn_h", "image_size=227")
    encoder, record = load_encoder(cfg)
    assert encoder.code_dim == 4096 and record["image_size"] == 227 and record["checkpoint"] == str(weights)
    from hydra.utils import instantiate

    generator = instantiate(cfg.generator.net, code_dim=4096)
    assert generator.image_size == 256
    with torch.no_grad():
        image = generator(torch.rand(1, 4096))
        assert image.shape == (1, 3, 256, 256)
        assert encoder(fit_images(image, 227))["code"].shape == (1, 4096)
    dae = instantiate(cfg.dae, code_dim=4096)
    assert [m.out_features for m in dae.net if isinstance(m, torch.nn.Linear)] == [2048, 1024, 500, 1024, 2048, 4096]


def _validated_epochs(folder: Path) -> list[int]:
    """The epochs a csv-logged run validated: one val row per validation."""
    rows = next(folder.rglob("metrics.csv")).read_text().splitlines()
    header = rows[0].split(",")
    epoch, val = header.index("epoch"), header.index("val/loss")
    return [int(r.split(",")[epoch]) for r in rows[1:] if r.split(",")[val]]


def _steps_run(result: dict) -> int:
    return torch.load(result["last_checkpoint"], weights_only=True)["global_step"]


def test_priors_train_for_a_budget_of_steps_whatever_the_data_size(small_classifier, tmp_path):
    encoder = small_classifier[1]["best_checkpoint"]
    by_steps = [o for o in SMALL_PRIOR if not o.startswith("trainer.max_epochs")] + ["task.batch_size=64"]
    # 256 codes in batches of 64 are 4 steps an epoch, 512 are 8: the same 12 steps either way (3
    # epochs, or one and a half), validated once, at the end (task.val_every_steps=100 > 12)
    for train_size, epochs in ((256, [2]), (512, [1])):
        out = tmp_path / f"n{train_size}"
        result = train(compose_in(out, "task=prior", f"encoder.ckpt={encoder}", *by_steps,
                                  f"data.train_size={train_size}", "task.train_steps=12"))
        assert _steps_run(result) == 12 and _validated_epochs(out) == epochs, train_size
    explicit = tmp_path / "explicit"  # an epoch count on the command line wins over the budget
    result = train(compose_in(explicit, "task=prior", f"encoder.ckpt={encoder}", *by_steps, "task.train_steps=12",
                              "trainer.max_epochs=1"))
    assert _steps_run(result) == 4 and _validated_epochs(explicit) == [0]
    with pytest.raises(ConfigError, match=r"task.train_steps=0; expected a positive number of training steps"):
        train(compose_in(tmp_path / "bad", "task=prior", f"encoder.ckpt={encoder}", *by_steps, "task.train_steps=0"))
    # Validation every 8 steps, across epochs of 4; 20 steps round up to 3 whole intervals, so the
    # last step validates and the kept checkpoints saw the whole budget.
    spaced = tmp_path / "spaced"
    result = train(compose_in(spaced, "task=prior", f"encoder.ckpt={encoder}", *by_steps, "task.train_steps=20",
                              "task.val_every_steps=8"))
    assert _validated_epochs(spaced) == [1, 3, 5] and _steps_run(result) == 24
    assert torch.load(result["best_checkpoint"], weights_only=True)["global_step"] in (8, 16, 24)
    with pytest.raises(ConfigError, match=r"task.val_every_steps=0; expected a positive number of steps or null"):
        train(compose_in(tmp_path / "bad_every", "task=prior", f"encoder.ckpt={encoder}", *by_steps,
                         "task.val_every_steps=0"))
