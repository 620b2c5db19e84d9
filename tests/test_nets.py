import pytest
import torch
import torchvision
from hydra.utils import instantiate

from featvis.errors import ConfigError
from featvis.nets import AlexNet, activations, build_alexnet, layer_names, tap

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return AlexNet(num_classes=15, image_size=64, fc6_dim=256).eval()


def test_caffenet_layer_names_and_shapes(mini):
    names = ["conv1", "pool1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8"]
    acts = activations(mini, torch.rand(2, 3, 64, 64), names)
    assert list(acts) == names
    assert acts["conv1"].shape == (2, 32, 32, 32)
    assert acts["conv5"].shape[:2] == (2, 64) and acts["pool5"].shape[1] == 64
    assert acts["fc6"].shape == (2, 256) and acts["fc7"].shape == (2, 1024)
    assert acts["fc8"].shape == (2, 15)


def _same_input():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_named_layers_agree_with_forward_and_caffe_semantics(mini):
    x = _same_input()
    acts = activations(mini, x, ["fc6", "fc6.linear", "conv5", "conv5.bn", "fc8"])
    assert torch.allclose(acts["fc8"], mini(x), atol=1e-5)
    # `fc6` is the rectified code (Caffe's in-place ReLU blob); `fc6.linear` the pre-ReLU one.
    assert torch.equal(acts["fc6"], acts["fc6.linear"].clamp(min=0))
    assert acts["fc6.linear"].min() < 0 <= acts["fc6"].min()
    assert torch.equal(acts["conv5"], acts["conv5.bn"].clamp(min=0))


def test_tap_is_truncated_and_differentiable(mini):
    calls = []
    handle = mini.fc8.register_forward_hook(lambda *_: calls.append(1))
    try:
        conv3 = tap(mini, ["conv3"])
        image = torch.rand(1, 3, 64, 64, requires_grad=True)
        conv3(image)["conv3"][0, 5].mean().backward()
    finally:
        handle.remove()
    assert not calls, "a tap for conv3 must not run fc8"
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_unknown_layer_is_one_clear_error(mini):
    with pytest.raises(ConfigError, match="'conv9' not found") as err:
        tap(mini, ["conv9"])
    assert "\n" not in str(err.value) and "fc8" in str(err.value)


def test_layer_names_include_blocks_and_paths(mini):
    names = layer_names(mini)
    for name in ("conv1", "conv5", "conv5.conv", "fc6", "fc6.linear", "fc8"):
        assert name in names


def test_any_torchvision_model_by_module_path():
    resnet = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    acts = activations(resnet, torch.rand(1, 3, 64, 64), ["layer3", "layer4.1.relu_1", "fc"])
    assert acts["layer3"].shape == (1, 256, 4, 4) and acts["fc"].shape == (1, 10)


def test_caffenet_preset_loads_torchvision_alexnet_weights(tmp_path, compose_cfg):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    weights = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), weights)
    cfg = compose_cfg("model=caffenet", "image_size=227", f"model.weights={weights}")
    net = instantiate(cfg.model, num_classes=1000).eval()
    assert net.spec["fc6_dim"] == 4096 and net.image_size == 227
    x = torch.rand(2, 3, 227, 227)
    with torch.no_grad():
        expected = reference((x - IMAGENET_MEAN) / IMAGENET_STD)
        assert torch.allclose(net(x), expected, atol=1e-4)
    assert activations(net, x, ["fc6"])["fc6"].shape == (2, 4096)
    assert activations(net, x, ["conv5"])["conv5"].shape == (2, 256, 13, 13)


def test_weights_of_the_wrong_shape_are_a_clear_error(tmp_path):
    weights = tmp_path / "small.pth"
    torch.save(AlexNet(num_classes=10, fc6_dim=128).state_dict(), weights)
    with pytest.raises(ConfigError, match="does not fit"):
        build_alexnet(weights=str(weights), num_classes=10, fc6_dim=256)


@pytest.mark.parametrize("kwargs, bad", [
    ({"channels": [8, 8, 8]}, "channels"),
    ({"fc6_dim": 0}, "fc6_dim=0"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"image_size": 16}, "image_size=16"),
])
def test_bad_network_arguments(kwargs, bad):
    with pytest.raises(ConfigError, match=bad):
        AlexNet(num_classes=10, **kwargs)
