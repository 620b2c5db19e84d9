"""A frozen classifier read at named layers: the encoder E whose code the priors model."""

from __future__ import annotations

import torch
from torch import nn

from featvis.nets.layers import tap


class Encoder(nn.Module):
    """E(x) -> {"code": h, "features": comparator activations, "logits": class scores}.

    Frozen and always in eval mode (a Trainer's `.train()` does not reach its
    batch norm or dropout); gradients still flow to its input, which is how the
    generator's feature loss and the samplers use it.
    """

    def __init__(self, net: nn.Module, code_layer: str = "fc6", comparator_layer: str = "pool5",
                 logits_layer: str = "fc8"):
        super().__init__()
        self.roles = {"code": code_layer, "features": comparator_layer, "logits": logits_layer}
        self.layers = tap(net, list(self.roles.values()))
        self.layers.requires_grad_(False)
        self.image_size = int(getattr(net, "image_size", 0)) or None
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size or 64, self.image_size or 64,
                                device=next(self.layers.parameters()).device)
            self.code_dim = int(self.layers.eval()(probe)[code_layer].flatten(1).shape[1])
        self.train(False)

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        acts = self.layers(images)
        out = {role: acts[name] for role, name in self.roles.items()}
        out["code"] = out["code"].flatten(1)
        return out

    def code(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)["code"]
