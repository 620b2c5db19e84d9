"""python -m featvis.tools.shapes OUT.png [IMAGE_SIZE]: a sample grid of `shapes` (columns = classes)."""

import sys

import torch
from torchvision.utils import save_image

from featvis.data.shapes import ShapesDataset

out = sys.argv[1] if len(sys.argv) > 1 else "shapes.png"
size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
dataset, rows = ShapesDataset(1000, size), 3
examples: dict[int, list[torch.Tensor]] = {c: [] for c in range(len(dataset.classes))}
for i in range(len(dataset)):
    image, label = dataset[i]
    examples[label].append(image)
grid = [examples[c][r] for r in range(rows) for c in sorted(examples)]
save_image(torch.stack(grid), out, nrow=len(examples), padding=2, pad_value=1.0)
print(f"wrote {out}: columns are the classes {dataset.classes}")
