"""One sampler for every method of the survey (Eq. 11 / Eq. 13).

    z <- z + lr_t * (eps1 * d/dz objective(target(render(z))) + eps2 * prior(z)) + N(0, eps3^2)

then the post-step operators: code clipping to [0, ub] and decay (DGN-AM), image
operators (pixel AM).  `render` is the space's (featvis.synthesis.spaces): the identity
(z is the image: pixel AM), an inverse FFT (z is a spectrum) or a frozen generator (z is
the code h: DGN-AM, PPGN).  The prior is a PriorTerm (featvis.synthesis.priors).
A method is those three parts: a space, a prior term and a list of operators.
Notation follows the survey:
eps1 = condition, eps2 = prior, eps3 = noise (the PPGN paper and its code swap
eps1 and eps2).

The whole batch (units x seeds) moves in one tensor step: one forward, one
backward, no Python loop over units, no graph kept between steps, and no wait for
the device between checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from featvis.devices import to_host, use_channels_last, wait_for_copies
from featvis.errors import ConfigError, NumericsError
from featvis.nets.adapters import fit_images
from featvis.nets.layers import frozen, redirected_copy, tap
from featvis.synthesis.objectives import ObjectiveBatch
from featvis.synthesis.priors import PriorTerm, robustness_transform
from featvis.synthesis.settings import SamplerSettings
from featvis.synthesis.spaces import PixelSpace

# A post-step operator: (z, step) -> z.
Operator = Callable[[torch.Tensor, int], torch.Tensor]


def nonfinite_rows(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per term, which batch rows hold a NaN or inf: (B,) flags that stay on the device."""
    return {name: ~torch.isfinite(t.reshape(len(t), -1)).all(1) for name, t in terms.items()}


def require_finite(pending: list[tuple[int, dict[str, torch.Tensor]]]) -> None:
    """Stop with a NumericsError naming the first step, term and batch rows that were not finite.

    `pending` holds (step, nonfinite_rows) of the steps since the last check: one device sync
    for all of them in the common, all-finite case.
    """
    if not pending or not bool(torch.cat([f for _, rows in pending for f in rows.values()]).any()):
        return
    for step, rows in pending:
        for name, flags in rows.items():
            bad = flags.nonzero().flatten().tolist()
            if bad:
                raise NumericsError(f"synthesis: the {name} is not finite at step {step} (batch rows "
                                    f"{bad[:8]}{' ...' if len(bad) > 8 else ''}); expected finite values "
                                    "(lower method.lr or method.eps1/eps2)")


def low_pass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of std `sigma` pixels (kernel out to 3 sigma): detail finer than the blur,
    such as a generator's up-sampling grid, no longer reaches the target, so it cannot raise a unit."""
    radius = max(1, math.ceil(3 * sigma))
    return gaussian_blur(images, kernel_size=2 * radius + 1, sigma=sigma)


def alpha_mask(attribution: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) attributions -> alpha in [0, 1]: each image's divided by its 99th percentile, so
    a few extreme pixels do not leave the rest transparent."""
    top = attribution.flatten(1).float().quantile(0.99, dim=1).clamp_min(1e-12)
    return (attribution / top.view(-1, 1, 1, 1)).clamp(0, 1)


class AdaptiveStep:
    """z + lr * update taken by torch's Adam or NAdam (`name`): the update is the ascent direction,
    and each element's step is about lr whatever the update's scale there, so no part of z (a
    spectrum's low frequencies, say) runs ahead of the rest.  Every row of the batch keeps its own
    moments: the batch still moves in one tensor step."""

    def __init__(self, name: str, z: torch.Tensor):
        self.z = z.detach().clone().requires_grad_(True)
        optimizers = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}
        self.optimizer = optimizers[name]([self.z], lr=1.0)

    def __call__(self, z: torch.Tensor, update: torch.Tensor, lr: float) -> torch.Tensor:
        with torch.no_grad():
            self.z.copy_(z)  # the operators and the noise may have moved z since the last step
        self.z.grad = -update  # torch's optimizers descend
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return self.z.detach().clone()


@dataclass
class SamplerResult:
    last: torch.Tensor           # images of the last iterate, (B, 3, S, S) in [0, 1]
    best: torch.Tensor           # images of the best iterate by objective
    last_value: torch.Tensor     # objective values, (B,)
    best_value: torch.Tensor
    best_step: torch.Tensor      # step of the best iterate, (B,)
    last_z: torch.Tensor
    best_z: torch.Tensor
    frames: list[torch.Tensor] = field(default_factory=list)  # recorded images, each (B, 3, S, S)
    frame_steps: list[int] = field(default_factory=list)
    # With settings.transparency: per image, where the objective's gradient was strong over the
    # run (the accumulated |d objective / d image| over colours, / its 99th percentile), (B, 1, S, S).
    alpha: torch.Tensor | None = None



class Sampler:
    """Activation maximization of `objectives` on `target` over z in `space` (default: pixels)."""

    def __init__(
        self,
        target: nn.Module,
        objectives: ObjectiveBatch,
        settings: SamplerSettings,
        space: nn.Module | None = None,
        prior: PriorTerm | None = None,
        operators: Sequence[Operator] = (),
        target_size: int | None = None,
        autocast: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        check_every: int = 10,
    ):
        self.target = target
        self.taps = tap(target, objectives.layers)
        # The same layers with lucid's redirected ReLU gradient, for the first settings.redirect_relu steps:
        # a unit dead on its start image gets a direction; later steps pay nothing for it.
        self.redirected = redirected_copy(self.taps) if settings.redirect_relu else None
        # Speed switches, for GPUs mostly: bf16 autocast, NHWC convolutions, torch.compile.
        self.autocast = autocast
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.target_size = target_size or int(getattr(target, "image_size", 0)) or None
        if self.target_size is None:
            raise ConfigError("target has no image_size; expected target_size to be given")
        self.space = space if space is not None else PixelSpace(self.target_size)
        for module in (self.taps, self.redirected, self.space):
            if module is not None:
                use_channels_last(module, channels_last)
        self._forward = torch.compile(self._values) if compile else self._values
        # Each finiteness check waits for the device; every step's flags are kept, so a check
        # every k steps still names the first bad step, at the cost of up to k - 1 wasted steps.
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ConfigError(f"performance.check_every={check_every}; expected a positive integer")
        self.check_every = check_every
        self.objectives = objectives
        self.settings = settings
        self.prior = prior
        self.operators = list(operators)
        if max(settings.eps2, settings.eps2_end or 0.0) > 0 and prior is None:
            end = "" if settings.eps2_end is None else f" (eps2_end={settings.eps2_end})"
            raise ConfigError(f"method.step.eps2={settings.eps2}{end} but no prior is configured; "
                              "expected method.prior or eps2=0")

    def render(self, z: torch.Tensor) -> torch.Tensor:
        """z -> images in [0, 1] at the target's input size."""
        return fit_images(self.space(z), self.target_size).clamp(0, 1)

    def _values(self, z: torch.Tensor, transforms: torch.Generator, noise: torch.Generator,
                taps: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            s = self.settings
            rendered = self.render(z)
            # each view its own transform and noise: the features must survive all of them
            views = [self._view(rendered, transforms, noise) for _ in range(s.views)]
            values = torch.stack([self.objectives(taps(v.contiguous(memory_format=self.memory_format)))
                                  for v in views]).mean(0)
        return values.float(), views[0].float(), rendered

    def _view(self, rendered: torch.Tensor, transforms: torch.Generator, noise: torch.Generator) -> torch.Tensor:
        """What the target reads of the rendered images at one step: transformed, blurred, noised."""
        s = self.settings
        images = robustness_transform(rendered, s.jitter, s.scale, s.rotate, transforms)
        if s.target_blur > 0:
            images = low_pass(images, s.target_blur)
        if s.image_noise > 0:
            images = images + s.image_noise * torch.randn(images.shape, generator=noise, device=rendered.device)
        return images

    def run(self, z0: torch.Tensor, seed: int = 0, progress: bool = False) -> SamplerResult:
        """Optimize every row of z0 for `settings.steps` steps; nets and global RNG untouched.

        The step never waits for the device except for the finiteness check every
        `check_every` steps; recorded frames and the results are copied to the host as they come.
        """
        s = self.settings
        device = z0.device
        self.objectives.to(device)
        noise = torch.Generator(device=device).manual_seed(seed)
        # The transforms' few random scalars per step come from the host: no device sync to read
        # them, and a CPU and a GPU run draw the same ones.
        transforms = torch.Generator(device="cpu").manual_seed(seed)
        z = z0.detach().clone()
        best_value = torch.full((len(z),), -torch.inf, device=device)
        best_z, best_step = z.clone(), torch.zeros(len(z), dtype=torch.long, device=device)
        frames, frame_steps = [], []
        attribution = None  # with settings.transparency: the accumulated |d objective / d image|
        adaptive = AdaptiveStep(s.optimizer, z) if s.optimizer != "sgd" else None
        burn_in = s.burn_in_steps()
        peak = None  # with settings.gradient_scale=peak: each row's largest gradient scale since the burn-in
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        modules = [m for m in (self.space, self.prior, *self.operators) if isinstance(m, nn.Module)]
        for module in modules:
            module.to(device)

        def keep_best(values: torch.Tensor, z: torch.Tensor, step: int) -> None:
            nonlocal best_value, best_z, best_step
            improved = values > best_value
            best_value = torch.where(improved, values, best_value)
            best_z = torch.where(improved.view(-1, *([1] * (z.ndim - 1))), z, best_z)
            best_step = torch.where(improved, step, best_step)

        # The taps are a traced copy with their own train/eval graphs: freeze them too.
        with frozen(self.target, self.taps, self.redirected, *modules):
            for step in tqdm(range(s.steps), desc="synthesis", disable=not progress, leave=False):
                z.requires_grad_(True)
                with torch.enable_grad():
                    taps = self.redirected if self.redirected is not None and step < s.redirect_relu else self.taps
                    values, images, rendered = self._forward(z, transforms, noise, taps)
                    grad, *image_grad = torch.autograd.grad(values.sum(), (z, rendered) if s.transparency else z)
                if image_grad:
                    step_attribution = image_grad[0].detach().abs().sum(1, keepdim=True)
                    attribution = step_attribution if attribution is None else attribution + step_attribution
                z = z.detach()
                values = values.detach()
                terms = {"objective": values, "gradient": grad}  # checked together at the end of the step
                if step >= burn_in:
                    keep_best(values, z, step)
                if s.record_every and step % s.record_every == 0:
                    frames.append(to_host(images))
                    frame_steps.append(step)

                if s.normalize_gradient:
                    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12)
                    if s.gradient_scale == "peak" and step >= burn_in:
                        peak = scale if peak is None else torch.maximum(peak, scale)
                        scale = peak
                    grad = grad / scale.view(-1, *([1] * (grad.ndim - 1)))
                update = s.eps1 * grad
                prior_weight = s.eps2_at(step)
                if prior_weight > 0:
                    with torch.no_grad():
                        prior_term = self.prior(z)
                    terms["prior term"] = prior_term
                    update = update + prior_weight * prior_term
                z = z + s.lr_at(step) * update if adaptive is None else adaptive(z, update, s.lr_at(step))
                noise_std = s.eps3_at(step)
                if noise_std > 0:
                    z = z + noise_std * torch.randn(z.shape, generator=noise, device=device)
                for operator in self.operators:
                    z = operator(z, step)
                terms["z after the update"] = z
                pending.append((step, nonfinite_rows(terms)))
                if len(pending) == self.check_every or step == s.steps - 1:
                    require_finite(pending)
                    pending.clear()

            with torch.no_grad():
                last_value = self.objectives(self.taps(self.render(z)))
                keep_best(last_value, z, s.steps)
                last_images, best_images = self.render(z), self.render(best_z)
        if s.record_every:
            frames.append(to_host(last_images))
            frame_steps.append(s.steps)
        result = SamplerResult(last=to_host(last_images), best=to_host(best_images),
                               last_value=to_host(last_value), best_value=to_host(best_value),
                               best_step=to_host(best_step), last_z=to_host(z), best_z=to_host(best_z),
                               frames=frames, frame_steps=frame_steps,
                               alpha=None if attribution is None else to_host(alpha_mask(attribution)))
        wait_for_copies(device)
        return result
