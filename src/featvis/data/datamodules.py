"""Lightning data modules: built-in `shapes`, an ImageFolder tree, and local CIFAR-10.

All of them yield RGB images in [0, 1] at `image_size`; normalization belongs to
the network (see `featvis.nets.alexnet`), so data, generators and samplers share
one image range.  Each module knows its `class_names` as soon as it is built, so
the classifier's output size and the checkpoint's labels come from the data.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms
from tqdm.auto import tqdm

from featvis.data.shapes import ShapesDataset
from featvis.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ImageDataModule(L.LightningDataModule):
    """Train/val loaders over two datasets of (image in [0, 1], label)."""

    def __init__(self, batch_size: int = 128, num_workers: int = 0,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}; expected a positive integer")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers}; expected 0 or more")
        self.batch_size = batch_size
        self.num_workers = num_workers
        # The statistics a network trained on this data normalizes its input with.
        self.mean, self.std = list(mean), list(std)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.class_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a loader")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=shuffle and len(dataset) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


def _in_memory(dataset: ShapesDataset) -> TensorDataset:
    """Every item rendered once, as uint8, so epochs after the first cost no rendering."""
    key = (len(dataset), dataset.image_size, dataset.seed, dataset.split, tuple(dataset.shapes),
           tuple(dataset.colours), tuple(dataset.channel_order or ()))
    return _UInt8Images(*_rendered(dataset, key))


# Rendered sets are kept per process: the pipeline's stages (and the jobs of a sweep in one
# process) would otherwise render the same images again for every network they train.
_RENDERED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_KEEP_RENDERED = 4


def _rendered(dataset: ShapesDataset, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if key in _RENDERED:
        return _RENDERED[key]
    images = torch.empty(len(dataset), 3, dataset.image_size, dataset.image_size, dtype=torch.uint8, device="cpu")
    labels = torch.empty(len(dataset), dtype=torch.long, device="cpu")
    for i in tqdm(range(len(dataset)), desc=f"rendering shapes ({dataset.split})", leave=False, mininterval=1.0):
        image, labels[i] = dataset[i]
        images[i] = (image * 255).round_().to(torch.uint8)
    while len(_RENDERED) >= _KEEP_RENDERED:
        _RENDERED.pop(next(iter(_RENDERED)))  # the oldest first
    _RENDERED[key] = (images, labels)
    return images, labels


class _UInt8Images(TensorDataset):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(index)
        return image.float().div_(255.0), label


class ShapesDataModule(ImageDataModule):
    """The built-in procedural data set (see `featvis.data.shapes`)."""

    def __init__(
        self,
        image_size: int = 64,
        train_size: int = 10000,
        val_size: int = 2000,
        seed: int = 0,
        shapes: Sequence[str] = ("circle", "square", "triangle", "star", "cross"),
        colours: Sequence[str] = ("red", "green", "blue"),
        channel_order: Sequence[int] | None = None,
        in_memory: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ):
        super().__init__(batch_size, num_workers, mean, std)
        common = dict(image_size=image_size, seed=seed, shapes=shapes, colours=colours,
                      channel_order=channel_order)
        self._train = ShapesDataset(train_size, split="train", **common)
        self._val = ShapesDataset(val_size, split="val", **common)
        self.class_names = self._train.classes
        self.in_memory = in_memory

    def setup(self, stage: str | None = None) -> None:
        # Render only what the stage needs: validation alone does not render the training set.
        if self.val_set is None:
            self.val_set = _in_memory(self._val) if self.in_memory else self._val
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = _in_memory(self._train) if self.in_memory else self._train


def _folder_transform(image_size: int, resize: int | None, train: bool) -> transforms.Compose:
    resize = resize or image_size
    if resize < image_size:
        raise ConfigError(f"data.resize={resize}; expected at least image_size={image_size}")
    crop = transforms.RandomCrop(image_size) if train else transforms.CenterCrop(image_size)
    steps = [transforms.Resize(resize), crop]
    if train:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose([*steps, transforms.ToTensor()])


def _check_readable(samples: list[tuple[str, int]]) -> Counter[str]:
    """Open each file's header (cheap: no decoding) so a bad file fails now, by name; returns how
    many files there are of each mode other than RGB (they are converted as they load)."""
    modes: Counter[str] = Counter()
    for path, _ in tqdm(samples, desc="checking images", leave=False, mininterval=2.0):
        try:
            with Image.open(path) as image:
                if image.mode != "RGB":
                    modes[image.mode] += 1
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"data: cannot read image {path}: {type(err).__name__}; "
                            "expected a readable image file") from None
    return modes


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any mode as 8-bit RGB.

    PIL converts integer grey ("I;16", "I": 16-bit PNGs) to RGB by clipping at 255, which turns
    a 16-bit image white: those are scaled from 0-65535 to 0-255 first.  An alpha channel is
    dropped, as torchvision's own loader does.
    """
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64) / 257.0  # 65535 / 257 = 255
        image = Image.fromarray(values.round().clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def _load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"data: cannot decode image {path}: {err}; expected a readable image file") from None


class ImageFolderDataModule(ImageDataModule):
    """`root/train/<class>/*` and `root/val/<class>/*` (the ImageNet/Places layout)."""

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        resize: int | None = None,
        check_files: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ):
        super().__init__(batch_size, num_workers, mean, std)
        self.root = Path(root).expanduser()
        self.train_set = self._folder("train", _folder_transform(image_size, resize, train=True))
        val_set = self._folder("val", _folder_transform(image_size, resize, train=False))
        if val_set.classes != self.train_set.classes:
            raise DataError(f"data: class folders of {self.root / 'val'} differ from those of "
                            f"{self.root / 'train'}; expected the same class names")
        if check_files:
            samples = self.train_set.samples + val_set.samples
            modes = _check_readable(samples)
            if modes:
                counts = ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items(), key=lambda m: (-m[1], m[0])))
                log.info("data: converting %d of %d images of %s to RGB as they load (%s)",
                         sum(modes.values()), len(samples), self.root, counts)
        self.class_names = list(self.train_set.classes)
        # ImageFolder lists each class's files together, so the first N validation images (the
        # evaluation's real images, the top-k pools, the sample grids) would be a few classes
        # only; a fixed shuffle makes them a sample of every class, the same in every run.
        order = torch.randperm(len(val_set), generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
        self.val_set = Subset(val_set, order.tolist())

    def _folder(self, split: str, transform: transforms.Compose) -> datasets.ImageFolder:
        path = self.root / split
        if not path.is_dir():
            raise DataError(f"data.root: {path} is not a directory; expected {self.root}/{split}/<class>/<images>")
        try:
            return datasets.ImageFolder(str(path), transform=transform, loader=_load_rgb)
        except FileNotFoundError as err:
            # torchvision raises this both for no class folder and for classes without images
            detail = "no class folders" if "class folder" in str(err) else "a class folder with no images"
            raise DataError(f"data.root: {path} has {detail}; expected {path}/<class>/<images>") from None


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 from a local torchvision root; never downloads."""

    def __init__(self, root: str, image_size: int = 32, batch_size: int = 128, num_workers: int = 0,
                 mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
                 std: Sequence[float] = (0.247, 0.243, 0.261)):
        super().__init__(batch_size, num_workers, mean, std)
        root_path = Path(root).expanduser()
        resize = [transforms.Resize(image_size)] if image_size != 32 else []
        train_tf = transforms.Compose([*resize, transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        val_tf = transforms.Compose([*resize, transforms.ToTensor()])
        try:
            self.train_set = datasets.CIFAR10(str(root_path), train=True, transform=train_tf, download=False)
            self.val_set = datasets.CIFAR10(str(root_path), train=False, transform=val_tf, download=False)
        except RuntimeError:
            raise DataError(f"data.root: no CIFAR-10 found at {root_path}; expected the extracted "
                            f"'cifar-10-batches-py' folder inside it (featvis never downloads)") from None
        self.class_names = list(self.train_set.classes)
