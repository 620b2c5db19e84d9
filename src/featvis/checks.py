"""Checks of the priors against known answers."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from featvis.nets.codes import CodeDAE, CodeStatistics
from featvis.training.prior import CodePriorModule


def dae_gaussian_score_check(dim: int = 16, samples: int = 20000, sigma: float = 0.3, epochs: int = 15,
                             seed: int = 0) -> dict[str, float]:
    """Train the DAE prior (the real module and Trainer) on a Gaussian; compare its score with the truth.

    For p = N(mu, S) the score is -S^-1 (h - mu).  A DAE trained at noise sigma
    estimates the score of p smoothed by that noise, -(S + sigma^2 I)^-1 (h - mu);
    both are reported as the mean cosine over fresh samples.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=gen, device="cpu") / dim**0.5
    covariance = mixing @ mixing.T + 0.5 * torch.eye(dim, device="cpu")
    mean = torch.randn(dim, generator=gen, device="cpu")
    chol = torch.linalg.cholesky(covariance)

    def draw(n: int) -> torch.Tensor:
        return mean + torch.randn(n, dim, generator=gen, device="cpu") @ chol.T

    train = draw(samples)
    dae = CodeDAE(dim, hidden=[128, 128], sigma=sigma)
    module = CodePriorModule(dae, CodeStatistics(dim).fit(train), encoder_record={},
                             optimizer=partial(torch.optim.Adam, lr=1e-3))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(train), batch_size=256, shuffle=True))

    test = draw(2000)
    with torch.no_grad():
        estimate = dae.eval().score(test)
    centred = test - mean
    true_score = -centred @ torch.linalg.inv(covariance)
    smoothed_score = -centred @ torch.linalg.inv(covariance + sigma**2 * torch.eye(dim, device="cpu"))
    return {"cosine_to_true_score": F.cosine_similarity(estimate, true_score, dim=1).mean().item(),
            "cosine_to_smoothed_score": F.cosine_similarity(estimate, smoothed_score, dim=1).mean().item()}
