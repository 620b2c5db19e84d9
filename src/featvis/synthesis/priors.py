"""The eps2 term of the update, grad log p(z), and the operators r(z) applied after each step.

A prior term is a `PriorTerm`: an nn.Module whose forward returns a tensor shaped like z that
the sampler adds with weight eps2.  An operator is a callable (z, step) -> z applied after
each step in place of a gradient: the hand-designed image priors of the survey, DGN-AM's code
clipping and decay.  All work on a batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import affine, gaussian_blur

from featvis.errors import ConfigError
from featvis.nets.adapters import fit_images


class PriorTerm(nn.Module):
    """forward(z) -> grad log p(z) (or a direction toward likelier z), shaped like z.  Its networks
    are submodules: the sampler moves and freezes them with the term."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianPrior(PriorTerm):
    """p(z) = N(0, I) up to scale: grad log p = -z (L2 decay)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return -z


class CenteredGaussianPrior(PriorTerm):
    """L2 decay toward a centre (mid-grey for images in [0, 1])."""

    def __init__(self, center: float = 0.5):
        super().__init__()
        self.center = center

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.center - z


class TotalVariationPrior(PriorTerm):
    """-grad of the total variation of an image batch (favours piecewise-smooth images)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = z.detach().requires_grad_(True)
            tv = (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum()
            (grad,) = torch.autograd.grad(tv, x)
        return -grad


class DAEPrior(PriorTerm):
    """The learned code prior of PPGN: grad log p(h) ~ (R(h) - h) / sigma^2."""

    def __init__(self, dae: nn.Module):
        super().__init__()
        self.dae = dae

    @classmethod
    def from_checkpoint(cls, prior_ckpt: str | None, space: nn.Module) -> DAEPrior:
        """The DAE of `prior_ckpt` (task=prior), checked to model the codes of the space's G."""
        from featvis.checkpoints import check_same_code, load_prior

        if not prior_ckpt:
            raise ConfigError("method.prior=DAEPrior needs prior.ckpt; expected a checkpoint from task=prior")
        if getattr(space, "record", None) is None:
            raise ConfigError("method.prior=DAEPrior models a generator's codes; expected a code method "
                              "(method.space=CodeSpace.from_checkpoint)")
        dae, _, record = load_prior(prior_ckpt)
        check_same_code(space.record, record)
        return cls(dae)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dae.score(z)


class EncoderLoopPrior(PriorTerm):
    """The released PPGN sampler's prior term E(G(h)) - h: the encoder/generator pair as an autoencoder."""

    def __init__(self, generator: nn.Module, encoder: nn.Module):
        super().__init__()
        self.generator, self.encoder = generator, encoder

    @classmethod
    def for_space(cls, space: nn.Module) -> EncoderLoopPrior:
        """The loop through the code space's G and the encoder G was trained on."""
        from featvis.synthesis.spaces import CodeSpace, record_encoder

        if not isinstance(space, CodeSpace):
            raise ConfigError("method.prior=EncoderLoopPrior needs a code method; expected "
                              "method.space=CodeSpace.from_checkpoint")
        return cls(space.generator, record_encoder(space.record or {}, "method.prior=EncoderLoopPrior"))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        size = self.encoder.image_size
        return self.encoder.code(fit_images(self.generator(z), size).clamp(0, 1)) - z


class ClipCodes(nn.Module):
    """DGN-AM's code prior as an operator: every unit of h clipped to [0, upper] (upper: a high
    percentile of the real codes, per unit)."""

    def __init__(self, upper: torch.Tensor):
        super().__init__()
        self.register_buffer("upper", upper.detach().clone())

    @classmethod
    def at_quantile(cls, space: nn.Module, quantile: float = 0.99) -> ClipCodes:
        """Clip at this quantile of the real codes of the space's G."""
        if not 0 < quantile <= 1:  # NaN too
            raise ConfigError(f"method.operators.clip.quantile={quantile}; expected a value in (0, 1]")
        if not hasattr(space, "stats"):
            raise ConfigError("method.operators.clip clips a generator's codes; expected a code method "
                              "(method.space=CodeSpace.from_checkpoint)")
        return cls(space.stats.quantile(quantile))

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        return torch.minimum(z.clamp(min=0), self.upper)


class Decay(nn.Module):
    """z multiplied by `factor` after every step (DGN-AM: 0.99), a pull toward small codes."""

    def __init__(self, factor: float):
        super().__init__()
        if not 0 < factor <= 1:  # NaN too
            raise ConfigError(f"method.operators.decay.factor={factor}; expected a value in (0, 1]")
        self.factor = float(factor)

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        return z * self.factor


class ImageOperators:
    """Hand-designed image priors applied as operators r(x) after a step (Yosinski et al. 2015).

    blur_every/blur_sigma: Gaussian blur every few steps; clip_percentile: zero (set to grey)
    the pixels whose norm is in the lowest percentile; all images stay in [0, 1].
    """

    def __init__(self, blur_every: int = 4, blur_sigma: float = 0.5, clip_percentile: float = 0.1):
        self.blur_every, self.blur_sigma, self.clip_percentile = blur_every, blur_sigma, clip_percentile

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self.blur_every and step % self.blur_every == 0 and self.blur_sigma > 0:
            kernel = 2 * int(3 * self.blur_sigma) + 1
            x = gaussian_blur(x, [kernel, kernel], [self.blur_sigma, self.blur_sigma])
        if self.clip_percentile > 0:
            norms = (x - 0.5).norm(dim=1, keepdim=True)
            cut = torch.quantile(norms.flatten(1), self.clip_percentile, dim=1).view(-1, 1, 1, 1)
            x = torch.where(norms < cut, torch.full_like(x, 0.5), x)
        return x.clamp(0, 1)


def robustness_transform(images: torch.Tensor, pixels: int, scale: float, degrees: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Random roll, scale and rotation of the whole batch (features must survive them; lucid's
    transformation robustness).  Differentiable, so gradients reach the untransformed image.

    The parameters are host scalars drawn from `generator`, a CPU generator whatever the
    images' device: reading them never waits for the device.
    """
    if pixels > 0:
        dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator, device="cpu").tolist()
        images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    if scale > 0 or degrees > 0:
        factor = 1.0 + scale * (2 * torch.rand((), generator=generator, device="cpu").item() - 1)
        angle = degrees * (2 * torch.rand((), generator=generator, device="cpu").item() - 1)
        images = affine(images, angle=angle, translate=[0, 0], scale=factor, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR)
    return images
