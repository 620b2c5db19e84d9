"""Code-space modules: statistics of an encoder's codes, and the DAE prior over codes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featvis.errors import ConfigError

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


class CodeStatistics(nn.Module):
    """Per-unit mean, std and quantiles of codes over a data set (buffers, so they checkpoint).

    DGN-AM clips each code unit to [0, ub_i] with ub_i from these (e.g. the 99th
    percentile, or mean + k * std); G on random codes draws from them.
    """

    def __init__(self, code_dim: int, quantiles: Sequence[float] = QUANTILES):
        super().__init__()
        self.quantile_levels = [float(q) for q in quantiles]
        self.register_buffer("mean", torch.zeros(code_dim))
        self.register_buffer("std", torch.zeros(code_dim))
        self.register_buffer("quantiles", torch.zeros(len(quantiles), code_dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def fit(self, codes: torch.Tensor) -> CodeStatistics:
        """Set the statistics from a (N x code_dim) tensor of codes."""
        if codes.ndim != 2 or codes.shape[1] != self.mean.numel() or len(codes) < 2:
            raise ConfigError(f"code statistics: codes of shape {tuple(codes.shape)}; "
                              f"expected (N >= 2, {self.mean.numel()})")
        codes = codes.float()
        self.mean.copy_(codes.mean(0))
        self.std.copy_(codes.std(0))
        levels = torch.tensor(self.quantile_levels, device=codes.device)
        # torch.quantile caps its input size; a strided subsample keeps it exact enough.
        sample = codes[:: max(1, len(codes) // 200_000)]
        self.quantiles.copy_(torch.quantile(sample, levels, dim=0))
        self.count.fill_(len(codes))
        return self

    def quantile(self, level: float) -> torch.Tensor:
        if level not in self.quantile_levels:
            raise ConfigError(f"code quantile {level}; expected one of {self.quantile_levels}")
        return self.quantiles[self.quantile_levels.index(level)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random codes: per-unit Gaussians with the data's mean and std, rectified like the codes."""
        # Drawn where the generator lives, so one seed gives the same codes wherever the statistics are.
        where = generator.device if generator is not None else self.mean.device
        noise = torch.randn(n, self.mean.numel(), generator=generator, device=where).to(self.mean.device)
        return (self.mean + noise * self.std).clamp(min=0)


class CodeDAE(nn.Module):
    """Fully connected denoising autoencoder R over codes (PPGN-h: 4096-2048-1024-500-1024-2048-4096).

    Trained to map h + N(0, sigma^2) back to h, R(h) - h estimates sigma^2 * grad log p(h)
    (Alain & Bengio 2014), so `score(h) = (R(h) - h) / sigma^2` is the prior term of PPGN.
    `residual=False` is the plain autoencoder of the paper.
    """

    arch = "code_dae"

    def __init__(self, code_dim: int, hidden: Sequence[int] = (512, 256, 128, 256, 512), sigma: float = 1.0,
                 residual: bool = True):
        super().__init__()
        if code_dim < 1 or not hidden or min(hidden) < 1:
            raise ConfigError(f"prior.hidden={list(hidden)}, code_dim={code_dim}; expected positive sizes")
        if not sigma > 0:
            raise ConfigError(f"prior.sigma={sigma}; expected a positive noise level")
        self.spec = {"arch": self.arch, "code_dim": int(code_dim), "hidden": [int(h) for h in hidden],
                     "sigma": float(sigma), "residual": bool(residual)}
        self.residual = bool(residual)
        self.code_dim = int(code_dim)
        self.sigma = float(sigma)
        dims = [code_dim, *hidden, code_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # Residual form R(h) = h + f(h): f is then sigma^2 times the score itself, so the
        # network need not spend its capacity on reproducing h to high precision.
        return codes + self.net(codes) if self.residual else self.net(codes)

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        """Denoising loss at this DAE's sigma."""
        noisy = codes + self.sigma * torch.randn_like(codes)
        return F.mse_loss(self(noisy), codes)

    def score(self, codes: torch.Tensor) -> torch.Tensor:
        """Estimate of grad log p(h) at `codes`."""
        return (self(codes) - codes) / self.sigma**2


@torch.no_grad()
def encode_all(encoder: nn.Module, batches: Iterable, max_items: int | None = None) -> torch.Tensor:
    """`encoder.code` of every image the loader yields (images first in each batch), on the CPU."""
    codes, seen = [], 0
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    for batch in batches:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        codes.append(encoder.code(images.to(device)).cpu())
        seen += len(images)
        if max_items is not None and seen >= max_items:
            break
    if not codes:
        raise ConfigError("encode: the data loader yielded no images; expected at least one batch")
    all_codes = torch.cat(codes)
    return all_codes[:max_items] if max_items is not None else all_codes
