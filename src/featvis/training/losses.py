"""The DeePSiM objective as plain functions, shared by the LightningModule and plain loops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featvis.errors import ConfigError
from featvis.nets.adapters import fit_images
from featvis.nets.layers import tap


@dataclass
class LossWeights:
    """lambda_img, lambda_feat, lambda_adv, lambda_spec: set by task/generator.yaml's loss_weights
    (no defaults here, so the config is the one place they are written)."""

    image: float
    feature: float
    adversarial: float
    spectral: float


class Comparator(nn.Module):
    """The encoder read in one pass at several comparator layers, besides its code and logits.

    Returns the encoder's dict with `features` = {layer: activation}; the feature loss
    is then the weighted sum of per-layer mean squared errors.  Frozen and in eval mode
    like the encoder (it shares the encoder's weights).

    `others`: more classifiers (same input size), read at the same layers with the same weights;
    their features come under the keys "<layer>@<i>", i = 1, 2, ...  A reconstruction must then
    match the real image in networks besides the encoder, so G cannot settle for what only the
    encoder responds to.
    """

    def __init__(self, encoder: nn.Module, layers: dict[str, float], others: Sequence[nn.Module] = ()):
        super().__init__()
        layer_weights = {str(k): float(v) for k, v in layers.items()}
        self.code_layer, self.logits_layer = encoder.roles["code"], encoder.roles["logits"]
        self.layers = tap(encoder.layers, [self.code_layer, self.logits_layer, *layer_weights])
        for i, net in enumerate(others, 1):
            size = int(getattr(net, "image_size", 0))
            if size != encoder.image_size:
                raise ConfigError(f"comparator {i} takes {size} px images; expected the encoder's "
                                  f"{encoder.image_size} px")
        self.encoder_layers = list(layer_weights)
        self.others = nn.ModuleList(tap(net, self.encoder_layers) for net in others)
        self.weights = {**layer_weights, **{f"{name}@{i}": w for i in range(1, len(others) + 1)
                                            for name, w in layer_weights.items()}}
        self.requires_grad_(False)
        self.image_size = encoder.image_size
        self.train(False)

    def train(self, mode: bool = True) -> Comparator:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        acts = self.layers(images)
        features = {name: acts[name] for name in self.encoder_layers}
        for i, other in enumerate(self.others, 1):
            features.update({f"{name}@{i}": act for name, act in other(images).items()})
        return {"code": acts[self.code_layer].flatten(1), "logits": acts[self.logits_layer],
                "features": features}


def feature_loss(fake: torch.Tensor | dict[str, torch.Tensor], real: torch.Tensor | dict[str, torch.Tensor],
                 weights: dict[str, float] | None = None) -> torch.Tensor:
    if not isinstance(fake, dict):
        return F.mse_loss(fake, real)
    weights = weights or {}
    return sum(weights.get(name, 1.0) * F.mse_loss(fake[name], real[name]) for name in fake)


def log_power_spectrum(images: torch.Tensor, floor: torch.Tensor | float) -> torch.Tensor:
    """log(floor + the batch's mean power spectrum), per channel, each image's mean removed."""
    images = images.float()  # FFTs of half precision take only power-of-two sizes on CUDA
    centred = images - images.mean((-2, -1), keepdim=True)
    return (torch.fft.rfft2(centred, norm="ortho").abs().square().mean(0) + floor).log()


def spectral_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the log power spectra of the fakes and the real images, bin by
    bin in 2-D (Durall et al. 2020 match the azimuthal average of the spectrum).

    Pixel and feature losses let G leave out the fine texture it cannot place (a blur costs them
    little), and against that empty high band the pattern of G's 2x up-sampling stands out as a
    grid.  On a log scale a missing band costs as much as any other error.  The floor (1e-3 of
    the real images' mean power) keeps the log finite where the real spectrum is empty.
    """
    with torch.no_grad():
        floor = 1e-3 * (real - real.mean((-2, -1), keepdim=True)).square().mean()
        target = log_power_spectrum(real, floor)
    return F.mse_loss(log_power_spectrum(fake, floor), target)


def generator_losses(generator: nn.Module, discriminator: nn.Module, encoder: nn.Module,
                     images: torch.Tensor, weights: LossWeights,
                     target: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """lambda_img ||G(E(x)) - x||^2 + lambda_feat ||C(G(E(x))) - C(x)||^2 + lambda_adv GAN
    + lambda_spec spectral_loss.

    Returns every term, the weighted `total`, the reconstructions (`fake`) and
    the encoder's outputs on the real images (`target`, reusable by the D step).
    """
    if target is None:
        with torch.no_grad():
            target = encoder(images)
    fake = fit_images(generator(target["code"]), images.shape[-1])
    fake_out = encoder(fake)
    image = F.mse_loss(fake, images)
    feature = feature_loss(fake_out["features"], target["features"], getattr(encoder, "weights", None))
    logits = discriminator(fake, target["code"])
    adversarial = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    # Logged whatever its weight (one small FFT per batch); differentiated only when it counts.
    with torch.set_grad_enabled(torch.is_grad_enabled() and bool(weights.spectral)):
        spectral = spectral_loss(fake, images)
    total = (weights.image * image + weights.feature * feature + weights.adversarial * adversarial
             + weights.spectral * spectral)
    return {"total": total, "image": image, "feature": feature, "adversarial": adversarial,
            "spectral": spectral, "fake": fake, "fake_logits": fake_out["logits"], "target": target}


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                       code: torch.Tensor) -> torch.Tensor:
    """Real images (with their codes) labelled 1, reconstructions labelled 0."""
    real_logits = discriminator(real, code)
    fake_logits = discriminator(fake.detach(), code)
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


@dataclass
class GanBalance:
    """DeePSiM's D/G schedule from the ratio r = D loss / G adversarial loss.

    Pause D when r < pause_d (D wins too easily), resume it when r > resume_d,
    and pause G when r > pause_g (D has lost track; let it catch up).
    """

    pause_d: float = 0.1
    resume_d: float = 0.5
    pause_g: float = 10.0
    train_d: bool = True
    train_g: bool = True

    def update(self, d_loss: float, g_adversarial: float) -> None:
        ratio = d_loss / max(g_adversarial, 1e-8)
        if ratio < self.pause_d:
            self.train_d, self.train_g = False, True
        elif ratio > self.resume_d:
            self.train_d = True
            self.train_g = ratio <= self.pause_g

    def state_dict(self) -> dict[str, bool]:
        return {"train_d": self.train_d, "train_g": self.train_g}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        self.train_d, self.train_g = bool(state["train_d"]), bool(state["train_g"])
