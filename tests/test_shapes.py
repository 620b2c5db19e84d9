import numpy as np
import pytest
import torch

from featvis.data import ShapesDataModule, ShapesDataset
from featvis.errors import ConfigError


def test_same_seed_and_index_give_the_same_image():
    a, b = ShapesDataset(50, 64, seed=3), ShapesDataset(50, 64, seed=3)
    for i in (0, 7, 49):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and ya == yb
    # Order of access does not matter: item 7 alone equals item 7 after others.
    assert torch.equal(ShapesDataset(50, 64, seed=3)[7][0], a[7][0])


def test_seed_index_and_split_change_the_image():
    base = ShapesDataset(10, 64, seed=0)
    assert not torch.equal(base[0][0], base[1][0])
    assert not torch.equal(base[0][0], ShapesDataset(10, 64, seed=1)[0][0])
    assert not torch.equal(base[0][0], ShapesDataset(10, 64, seed=0, split="val")[0][0])


@pytest.mark.parametrize("size", [32, 64, 128, 227, 256])
def test_any_image_size(size):
    image, label = ShapesDataset(4, size)[0]
    assert image.shape == (3, size, size)
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert 0 <= label < 15


def test_classes_are_shape_times_colour_and_all_occur():
    ds = ShapesDataset(600, 32)
    assert len(ds.classes) == 15 and "red circle" in ds.classes and "blue star" in ds.classes
    labels = np.bincount([ds[i][1] for i in range(len(ds))], minlength=15)
    assert labels.min() > 15, labels  # roughly balanced: 40 expected per class


def test_channel_order_permutes_channels():
    rgb = ShapesDataset(3, 32)[1][0]
    brg = ShapesDataset(3, 32, channel_order=[2, 0, 1])[1][0]
    assert torch.equal(brg, rgb[[2, 0, 1]])


def test_colour_statistics_alone_do_not_solve_the_task():
    """Features matter: a nearest-centroid classifier on mean colour stays far from solving it."""
    train, val = ShapesDataset(1500, 32, split="train"), ShapesDataset(500, 32, split="val")

    def colour_features(ds):
        xs = torch.stack([ds[i][0] for i in range(len(ds))])
        # mean and spread of each channel: what a "single pixel" or colour histogram sees
        return torch.cat([xs.mean((2, 3)), xs.std((2, 3))], 1), torch.tensor([ds[i][1] for i in range(len(ds))])

    x_train, y_train = colour_features(train)
    x_val, y_val = colour_features(val)
    centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(15)])
    predicted = torch.cdist(x_val, centroids).argmin(1)
    accuracy = (predicted == y_val).float().mean().item()
    assert accuracy < 0.4, accuracy  # a trained convnet reaches > 0.95 (benchmarks/classifier.py)


@pytest.mark.parametrize("kwargs, bad", [
    ({"size": 0}, "size=0"),
    ({"size": 4, "image_size": 8}, "image_size=8"),
    ({"size": 4, "shapes": ["circle", "blob"]}, "blob"),
    ({"size": 4, "colours": ["red", "red"]}, "red"),
    ({"size": 4, "channel_order": [0, 0, 1]}, "channel_order"),
    ({"size": 4, "split": "dev"}, "dev"),
])
def test_bad_arguments_name_the_value(kwargs, bad):
    with pytest.raises(ConfigError, match=bad):
        ShapesDataset(**kwargs)


def test_in_memory_module_matches_on_the_fly_rendering():
    kwargs = dict(image_size=32, train_size=20, val_size=10, batch_size=8)
    cached, live = ShapesDataModule(in_memory=True, **kwargs), ShapesDataModule(in_memory=False, **kwargs)
    cached.setup("fit"), live.setup("fit")
    for i in (0, 19):
        assert torch.equal(cached.train_set[i][0], live.train_set[i][0])
        assert int(cached.train_set[i][1]) == live.train_set[i][1]
    images, labels = next(iter(cached.val_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    assert cached.num_classes == 15
    # Rendered once per process: another module of the same data shares the images (the
    # pipeline's stages each build one), a module of other data renders its own.
    again, other = ShapesDataModule(in_memory=True, **kwargs), ShapesDataModule(in_memory=True, **{**kwargs, "seed": 1})
    again.setup("fit"), other.setup("fit")
    assert again.train_set.tensors[0] is cached.train_set.tensors[0]
    assert other.train_set.tensors[0] is not cached.train_set.tensors[0]
    assert not torch.equal(other.train_set.tensors[0], cached.train_set.tensors[0])
