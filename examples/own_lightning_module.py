"""Watch a ResNet-18's features form while your own LightningModule trains it.

The LightningModule below is plain Lightning: it holds the network as `self.net` and knows
nothing of featvis.  `featvis.FeatureEvolution` is the only addition; it reads what the network
expects (image size, channels, the Normalize) from the validation data and writes, under
OUT/evolution, one frame per scheduled step of each unit's preferred image beside the validation
images that excite it most, with an index.html to browse them.

    python examples/own_lightning_module.py --data ~/my_images --generator G.ckpt --out runs/own
    python examples/own_lightning_module.py --wandb        # generated shapes, pixel_fft, wandb offline
    python examples/own_lightning_module.py --small        # a few seconds, as the tests run it

--data is an ImageFolder (one folder per class); without it a small one of shape images is written
first.  --generator is a featvis generator checkpoint (task=generator): with one the units are drawn
by DGN-AM (through G's code), without one by pixel_fft (no prior but the Fourier parametrization).
--wandb logs offline unless WANDB_MODE says otherwise (WANDB_MODE=online uploads).  The last
checkpoint (OUT/lightning_logs/version_0/checkpoints) loads into resnet_maco.py --weights.
"""

import argparse
import os
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

import featvis
from featvis.data.shapes import ShapesDataset
from featvis.io import save_png

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
UNITS = ["layer2:0", "layer4:3", "fc:0", "fc:1"]  # two conv channels and two classes


class Classifier(L.LightningModule):
    def __init__(self, num_classes: int):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.net(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        # at lr=0.05 a few steps already leave some units' activations in the hundreds and their frames blank
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def write_shapes(root: Path, size: int, count: int) -> Path:
    """An ImageFolder of `count` PNG shape images (one folder per class), standing in for your data."""
    shapes = ShapesDataset(count, image_size=size, seed=0)
    for index in range(count):
        image, label = shapes[index]
        save_png(image, root / shapes.classes[label].replace(" ", "_") / f"{index}.png")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an ImageFolder; default: generated shape images")
    parser.add_argument("--generator", help="a featvis generator checkpoint: DGN-AM instead of pixel_fft")
    parser.add_argument("--out", type=Path, default=Path("outputs/own_lightning_module"))
    parser.add_argument("--size", type=int, default=64, help="image side the network reads")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--wandb", action="store_true", help="also log to wandb (offline unless WANDB_MODE says)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="seconds: 32 images of 32 px, 4 steps, two short frames")
    args = parser.parse_args(argv)
    if args.data:
        return train(args, args.data)
    with tempfile.TemporaryDirectory(prefix="shapes_") as scratch:  # the frames keep copies of what they show
        return train(args, write_shapes(Path(scratch), 32 if args.small else args.size, 32 if args.small else 1500))


def train(args, data_dir: Path) -> dict:
    size, max_steps, synthesis_steps, batch = (32, 4, 12, 8) if args.small else (args.size, args.max_steps, 48, 32)
    L.seed_everything(args.seed)  # the network's initial weights and the order of the batches
    # The callback undoes this Normalize to show the real images and to feed the net its syntheses.
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    data = torchvision.datasets.ImageFolder(str(data_dir), transform=transform)
    train_loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
    val_loader = torch.utils.data.DataLoader(data, batch_size=64)  # your own split, in a real run

    method = "dgn_am" if args.generator else "pixel_fft"
    if not args.generator:
        print("no --generator given: drawing the units with pixel_fft instead of DGN-AM")
    evolution = featvis.FeatureEvolution(units=UNITS, method=method, generator=args.generator,
                                         dirpath=str(args.out / "evolution"), steps=synthesis_steps,
                                         # small: frames at step 0 and at the last step only
                                         log_frames=0 if args.small else 6, linear_frames=1 if args.small else 3)
    loggers = [L.pytorch.loggers.CSVLogger(args.out)]
    if args.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")  # nothing is uploaded unless asked for
        loggers.append(L.pytorch.loggers.WandbLogger(project="featvis-examples", save_dir=str(args.out)))
    trainer = L.Trainer(max_steps=max_steps, callbacks=[evolution], logger=loggers, default_root_dir=args.out,
                        enable_checkpointing=not args.small, enable_progress_bar=not args.small,
                        log_every_n_steps=1, num_sanity_val_steps=0 if args.small else 2)
    trainer.fit(Classifier(len(data.classes)), train_loader, val_loader)

    index = args.out / "evolution" / "index.html"
    print(f"{method}: {len(UNITS)} units over {len(evolution.recorder.recorded_steps())} frames: {index}")
    return {"index": index, "evolution": args.out / "evolution" / "evolution.json", "method": method}


if __name__ == "__main__":
    main()
