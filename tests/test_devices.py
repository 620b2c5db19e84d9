"""Device-correct code: every new tensor and random stream says where it lives, and the sampler
waits for the device only at its finiteness checks."""

import ast
from pathlib import Path

import pytest
import torch

from featvis.checkpoints import load_classifier
from featvis.devices import to_host, use_channels_last, wait_for_copies
from featvis.errors import ConfigError, NumericsError
from featvis.nets import Discriminator, Generator
from featvis.synthesis.objectives import ObjectiveBatch, Term
from featvis.synthesis.sampler import Sampler, SamplerSettings

from .conftest import ROOT

# torch calls that make a tensor or a random stream from nothing: without `device=` they land on
# the CPU, whatever device the data they meet is on.
FACTORIES = {"rand", "randn", "randint", "randperm", "zeros", "ones", "full", "empty", "arange", "tensor",
             "linspace", "logspace", "eye", "Generator"}
# A module's buffers and parameters move with the module: they may start on the CPU.
FOLLOWS_THE_MODULE = {"register_buffer", "Parameter", "nn.Parameter"}


def factory_calls_without_device(source: str) -> list[tuple[int, str]]:
    """(line, call) of every torch factory call in `source` that names no device."""
    tree = ast.parse(source)
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in {
                n.split(".")[-1] for n in FOLLOWS_THE_MODULE}:
            exempt.update(id(inner) for arg in node.args for inner in ast.walk(arg))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and ast.unparse(node.func.value) == "torch" and node.func.attr in FACTORIES
                and id(node) not in exempt and not any(k.arg == "device" for k in node.keywords)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_flags_the_call_that_crashed_on_a_gpu_and_passes_its_fix():
    crashed = "dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()"
    assert factory_calls_without_device(crashed) == [(1, "torch.randint(-pixels, pixels + 1, (2,), generator=generator)")]
    fixed = 'dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator, device="cpu").tolist()'
    assert factory_calls_without_device(fixed) == []
    assert len(factory_calls_without_device("g = torch.Generator()\nx = torch.zeros(3, device=y.device)")) == 1
    buffers = 'self.register_buffer("mean", torch.zeros(4))\nself.w = nn.Parameter(torch.randn(2, 2))'
    assert factory_calls_without_device(buffers) == []


def test_every_tensor_and_random_stream_in_src_names_its_device():
    sources = sorted((ROOT / "src").rglob("*.py"))
    assert any(p.name == "sampler.py" for p in sources)
    missing = [f"{p.relative_to(ROOT)}:{line}: {call}" for p in sources
               for line, call in factory_calls_without_device(Path(p).read_text())]
    assert not missing, "torch factory calls without device= (use the data's device, or device=\"cpu\" " \
                        "where the host is meant):\n" + "\n".join(missing)


def test_to_host_copies_and_waits_once():
    x = torch.arange(6.0, device="cpu").view(2, 3)
    host = to_host(x.requires_grad_(True) * 2)
    wait_for_copies(x.device)
    assert host.device.type == "cpu" and not host.requires_grad and torch.equal(host, 2 * x.detach())


@pytest.fixture(scope="module")
def net(small_classifier):
    return load_classifier(small_classifier[1]["best_checkpoint"])[0]


def _sampler(net, check_every, prior=None, **settings):
    objectives = ObjectiveBatch([[Term("fc8", 0)], [Term("fc8", 1)]], {"fc8": 15})
    settings = SamplerSettings(**{"steps": 7, "lr": 0.02, "normalize_gradient": True, **settings})
    return Sampler(net, objectives, settings, prior=prior, check_every=check_every)


def test_sparse_finiteness_checks_give_the_same_images_and_still_name_the_first_bad_step(net):
    z0 = torch.full((2, 3, 32, 32), 0.5)
    every_step = _sampler(net, 1, jitter=2, rotate=5.0).run(z0)
    sparse = _sampler(net, 4, jitter=2, rotate=5.0).run(z0)
    assert torch.equal(every_step.best, sparse.best) and torch.equal(every_step.best_step, sparse.best_step)

    def breaks_at_step_2(z, calls=[0]):  # the prior fails for row 1 from its third call on
        calls[0] += 1
        out = -z.clone()
        if calls[0] >= 3:
            out[1] = float("nan")
        return out

    with pytest.raises(NumericsError, match=r"the prior term is not finite at step 2 \(batch rows \[1\]\)"):
        _sampler(net, 5, prior=breaks_at_step_2, eps2=0.1).run(z0)
    for bad in (0, 2.5, "10"):
        with pytest.raises(ConfigError, match=rf"performance.check_every={bad}; expected a positive integer"):
            _sampler(net, bad)


def test_channels_last_changes_the_layout_and_not_the_results():
    torch.manual_seed(0)
    spec = dict(code_dim=16, fc_dims=[32], start_channels=8, stages=[[8, 8], [4, 0]], upsample="bilinear",
                norm="group")
    generator, discriminator = Generator(**spec), Discriminator(16, code_dim=16, channels=[4, 8])
    codes = torch.rand(5, 16)
    expected_images = generator(codes)
    expected_logits = discriminator(expected_images, codes)
    assert use_channels_last(generator, False) is generator
    assert generator.deconv.up0.weight.is_contiguous()

    for net in (generator, discriminator):
        use_channels_last(net, True)
    weights = [p for p in (*generator.parameters(), *discriminator.parameters()) if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights)
    images = generator(codes)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    torch.testing.assert_close(images, expected_images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(discriminator(images, codes), expected_logits, rtol=1e-4, atol=1e-5)

    plain = Generator(**spec)  # a channels-last state dict loads into a default-layout network
    plain.load_state_dict(generator.state_dict())
    assert plain.deconv.up0.weight.is_contiguous()
    torch.testing.assert_close(plain(codes), expected_images, rtol=1e-4, atol=1e-5)
