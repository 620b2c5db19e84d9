import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featvis.data import CIFAR10DataModule, ImageFolderDataModule
from featvis.errors import DataError


def _write_images(folder, count, size=(40, 30), colour=(200, 10, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, colour).save(folder / f"{i}.png")


@pytest.fixture
def tree(tmp_path):
    for split in ("train", "val"):
        _write_images(tmp_path / split / "cat", 3, colour=(200, 10, 10))
        _write_images(tmp_path / split / "dog", 2, colour=(10, 10, 200))
    return tmp_path


def test_imagefolder_loads_resized_cropped_images_in_unit_range(tree):
    dm = ImageFolderDataModule(root=str(tree), image_size=24, resize=28, batch_size=4)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog"]
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 24, 24) and 0 <= images.min() and images.max() <= 1
    colours = torch.tensor([[200, 10, 10], [10, 10, 200]]) / 255  # cat, dog
    assert torch.allclose(images[:, :, 12, 12], colours[labels], atol=0.02)


def test_first_validation_images_are_a_fixed_sample_of_every_class(tmp_path):
    """ImageFolder lists a class's files together; the evaluation and the top-k pools read the
    first N validation images, which must not be the first classes alone."""
    for name in "abcd":
        _write_images(tmp_path / "train" / name, 2)
        _write_images(tmp_path / "val" / name, 25)
    first, again = (ImageFolderDataModule(root=str(tmp_path), image_size=8, batch_size=20) for _ in range(2))
    labels = torch.cat([batch[1] for batch in first.val_dataloader()])
    assert sorted(labels.tolist()) == sorted(l for l in range(4) for _ in range(25))  # each image once
    assert set(labels[:20].tolist()) == {0, 1, 2, 3}
    assert labels.tolist() == torch.cat([batch[1] for batch in again.val_dataloader()]).tolist()


def test_images_of_other_modes_are_converted_to_rgb_and_counted(tree, caplog):
    """RGBA, grey and 16-bit grey images read as RGB in [0, 1]; 16-bit values are scaled, not clipped."""
    odd = tree / "val" / "cat"
    Image.new("RGBA", (40, 30), (200, 10, 10, 0)).save(odd / "rgba.png")
    Image.new("L", (40, 30), 51).save(odd / "grey.png")
    Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16)).save(odd / "deep.png")
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(odd / "white.png")
    assert Image.open(odd / "deep.png").mode == "I;16"
    with caplog.at_level(logging.INFO, logger="featvis.data.datamodules"):
        dm = ImageFolderDataModule(root=str(tree), image_size=24, resize=28)
    said = [r.getMessage() for r in caplog.records if "to RGB" in r.getMessage()]
    assert said == [f"data: converting 4 of 14 images of {tree} to RGB as they load (2 I;16, 1 L, 1 RGBA)"]
    dataset = dm.val_set.dataset
    value = {Path(path).name: dataset[i][0] for i, (path, _) in enumerate(dataset.samples)}
    assert all(image.shape == (3, 24, 24) for image in value.values())
    assert torch.allclose(value["rgba.png"][:, 12, 12], torch.tensor([200, 10, 10]) / 255)  # alpha dropped
    assert torch.allclose(value["grey.png"], torch.full((3, 24, 24), 0.2))
    assert torch.allclose(value["deep.png"], torch.full((3, 24, 24), 0.5), atol=0.003)  # 32768 / 65535
    assert torch.allclose(value["white.png"], torch.ones(3, 24, 24))


def test_non_image_files_with_other_extensions_are_skipped(tree):
    (tree / "train" / "cat" / "notes.txt").write_text("not an image")
    assert len(ImageFolderDataModule(root=str(tree)).train_set) == 5


@pytest.mark.parametrize("breakage, expected", [
    ("missing_root", "is not a directory"),
    ("empty_root", "is not a directory"),
    ("no_class_folders", "has no class folders"),
    ("class_without_images", "a class folder with no images"),
    ("corrupt_image", "cannot read image"),
    ("val_classes_differ", "differ"),
])
def test_bad_folders_are_one_line_errors_naming_the_path(tree, tmp_path, breakage, expected):
    root = tree
    if breakage == "missing_root":
        root = tmp_path / "nowhere"
    elif breakage == "empty_root":
        root = tmp_path / "empty"
        root.mkdir()
    elif breakage == "no_class_folders":
        root = tmp_path / "flat"
        _write_images(root / "train", 2)
        _write_images(root / "val", 2)
    elif breakage == "class_without_images":
        (tree / "train" / "bird").mkdir()
        (tree / "val" / "bird").mkdir()
    elif breakage == "corrupt_image":
        (tree / "val" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    elif breakage == "val_classes_differ":
        _write_images(tree / "val" / "bird", 1)
    with pytest.raises(DataError, match=expected) as err:
        ImageFolderDataModule(root=str(root))
    message = str(err.value)
    assert "\n" not in message and str(root) in message
    if breakage == "corrupt_image":
        assert "broken.jpg" in message


def test_cifar10_never_downloads_and_names_the_root(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 found at") as err:
        CIFAR10DataModule(root=str(tmp_path / "cifar"))
    assert str(tmp_path / "cifar") in str(err.value)
    assert not (tmp_path / "cifar").exists()
