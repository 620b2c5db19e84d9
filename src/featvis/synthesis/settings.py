"""The schemas of a method config (conf/method/*.yaml, `MethodConfig`) and of a synthesis
(conf/synthesis/default.yaml, `SynthesisSpec`): every default is declared here, once.

A method is the objects the sampler runs, one block each: `space` (where z lives and how it
renders), `prior` (the eps2 term), `operators` (applied after each step, in order) are built
from their `_target_`; `objective` and `step` are the dataclasses below.  The schema is
registered as `method/_base`, so each method file lists only what differs from it, and
`python visualize.py method=<name> --cfg job` shows the whole method.  Torch-free: the command
line composes configs before torch is imported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from os import PathLike
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from featvis.errors import ConfigError

PIXEL_SPACE = {"_target_": "featvis.synthesis.spaces.PixelSpace"}
# The sampler's step rules (SamplerSettings.optimizer): the plain step of Eq. 11, or torch's
# adaptive ones, whose step per element is about lr whatever the gradient's scale there.
OPTIMIZERS = ("sgd", "adam", "nadam")
GRADIENT_SCALES = ("current", "peak")


@dataclass
class ObjectiveSettings:
    """How the units' activations become the objective (featvis.synthesis.objectives.ObjectiveBatch)."""

    kind: str = "raw"                # raw | softmax | log_softmax (the survey's Table 1)
    selectivity: float = 0.0         # + this x the unit's log-softmax in its layer: the unit must lead
    diversity: float = 0.0           # minus this x each chain's Gram similarity to its unit's other seeds
    diversity_layer: str = "conv3"   # the layer whose Gram matrices the diversity term compares


@dataclass
class SamplerSettings:
    """The update z <- z + lr_t * (eps1 * d objective + eps2 * prior(z)) + N(0, eps3^2), and how
    the target reads each step's images."""

    steps: int = 200
    lr: float = 0.02                 # step size at the first step, after gradient normalization
    lr_end: Optional[float] = None   # linear schedule to this value at the last step; None = constant
    eps1: float = 1.0                # condition
    eps2: float = 0.0                # prior weight at the first step (needs a prior)
    eps2_end: Optional[float] = None  # linear schedule to this weight at the last step; None = constant
    eps3: float = 0.0                # noise std at the first step
    eps3_end: Optional[float] = None  # linear schedule to this std at the last step; None = constant
    normalize_gradient: bool = True  # divide the condition gradient by its mean |.| per sample
    # current: by this step's mean |.|, so every step moves ~lr however well the objective is met;
    # peak: by the largest the chain has met, so the condition's pull fades as its gradient falls
    # from that peak and the prior and noise move the chain (toward PPGN's mixing chains)
    gradient_scale: str = "current"
    # with gradient_scale=peak: this fraction of the steps first takes the current scale, so a chain
    # reaches its unit before the pull fades; the peak and the best iterate are met after it
    burn_in: float = 0.0
    optimizer: str = "sgd"           # sgd: z + lr * update; adam, nadam: the update through torch's Adam/NAdam
    jitter: int = 0                  # random roll of up to this many pixels per step
    scale: float = 0.0               # random rescaling by up to this fraction per step
    rotate: float = 0.0              # random rotation by up to this many degrees per step
    image_noise: float = 0.0         # std of Gaussian noise added to what the target reads per step
    views: int = 1                   # transformed views of each image the target reads per step; the objective is their mean
    target_blur: float = 0.0         # std (pixels) of a Gaussian blur on what the target reads
    transparency: bool = False       # accumulate |d objective / d image| into an alpha mask (MACO)
    redirect_relu: int = 16          # first steps in which a ReLU that passes no gradient for an image lets it through
    record_every: int = 0            # keep a frame every n steps (0: none); set by the caller, not the method

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "lr": self.lr >= 0,
            "lr_end": self.lr_end is None or self.lr_end >= 0,
            "eps1": self.eps1 >= 0, "eps2": self.eps2 >= 0, "eps3": self.eps3 >= 0,
            "eps2_end": self.eps2_end is None or self.eps2_end >= 0,
            "eps3_end": self.eps3_end is None or self.eps3_end >= 0,
            "jitter": self.jitter >= 0, "scale": 0 <= self.scale < 1, "rotate": self.rotate >= 0,
            "image_noise": self.image_noise >= 0, "target_blur": self.target_blur >= 0,
            "redirect_relu": isinstance(self.redirect_relu, int) and self.redirect_relu >= 0,
            "burn_in": 0 <= self.burn_in < 1,
            "record_every": self.record_every >= 0,
            "views": isinstance(self.views, int) and self.views >= 1,
        }
        if self.gradient_scale not in GRADIENT_SCALES:
            raise ConfigError(f"method.step.gradient_scale={self.gradient_scale!r}; expected one of "
                              f"{', '.join(GRADIENT_SCALES)}")
        if self.burn_in and self.gradient_scale != "peak":
            raise ConfigError(f"method.step.burn_in={self.burn_in} with gradient_scale={self.gradient_scale!r}; "
                              "expected burn_in=0, or gradient_scale=peak (the burn-in ends the current scale)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"method.step.optimizer={self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        for name, ok in checks.items():
            value = getattr(self, name)
            # NaN fails every comparison, so it lands here too
            if not ok or (isinstance(value, float) and value != value):
                raise ConfigError(f"method.step.{name}={value}; expected "
                                  + ("a positive integer" if name in ("steps", "views") else
                                     "a non-negative integer" if name == "redirect_relu" else
                                     "a fraction of the steps in [0, 1)" if name == "burn_in" else
                                     "a non-negative number"))

    def _linear(self, start: float, end: float | None, step: int) -> float:
        if end is None or self.steps == 1:
            return start
        return start + (end - start) * step / (self.steps - 1)

    def burn_in_steps(self) -> int:
        return math.ceil(self.burn_in * self.steps)

    def lr_at(self, step: int) -> float:
        return self._linear(self.lr, self.lr_end, step)

    def eps2_at(self, step: int) -> float:
        return self._linear(self.eps2, self.eps2_end, step)

    def eps3_at(self, step: int) -> float:
        return self._linear(self.eps3, self.eps3_end, step)


@dataclass
class MethodConfig:
    """One method: conf/method/<name>.yaml on this schema."""

    name: str = "???"
    space: Any = field(default_factory=lambda: dict(PIXEL_SPACE))
    prior: Any = None                                   # None, or a block with the _target_ of a PriorTerm
    operators: Any = field(default_factory=dict)        # name -> block with the _target_ of an operator
    search: Any = None                                  # None (gradient steps), or a block with the _target_ of a
                                                        # black-box strategy (featvis.blackbox: CMAES, GeneticAlgorithm)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    step: SamplerSettings = field(default_factory=SamplerSettings)


@dataclass
class Checkpoint:
    ckpt: Optional[str] = None


@dataclass
class JudgeSpec:
    """An independent classifier of the target's classes (another seed or width; never the
    target): judge transfer, diversity and KID/FID in its `feature_layer`'s space."""

    ckpt: Optional[str] = None
    feature_layer: str = "fc7"


@dataclass
class SynthesisSpec:
    """What a synthesis is drawn with and how: conf/synthesis/default.yaml's keys, which
    visualize.py takes at its top level and FeatureEvolution under callbacks.feature_evolution,
    plus what a caller sets (the fields after `noise_seed`).  Resolved and checked once, here;
    `featvis.synthesize` takes one (or its fields as keywords)."""

    generator: Checkpoint = field(default_factory=Checkpoint)  # G (task=generator or DeePSiM) for code methods
    prior: Checkpoint = field(default_factory=Checkpoint)      # the DAE (task=prior) of DAEPrior
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    layer: Optional[str] = None          # the layer of plain unit indices/names; None: the target's output
    units: Any = field(default_factory=lambda: [0, 1, 2])
    seeds: int = 4                       # syntheses per unit, each from its own start
    steps: Optional[int] = None          # sampler steps; None: the method's own
    spatial: str = "center"              # conv units: centre or mean over space; tokens: centre, mean, cls
    pre_relu: bool = False               # read layers that end in a ReLU before it
    top_k: int = 4                       # evolution frames: the validation images that activate each unit most
    keep: str = "best"                   # the iterate shown: best (by objective) or last
    noise_seed: int = 0                  # seed of the eps3 noise and of the transformations
    # Set by the caller:
    logits_layer: Optional[str] = None   # units of this layer are classes; None: the target's output
    class_names: Optional[list] = None   # names of the target's classes; None: the target's own
    record_every: int = 0                # keep a frame every n steps (visualize.py's GIFs)
    max_real: int = 1000                 # real images read for the figures and the multifaceted starts
    path_layers: Any = ()                # layers of the activation-path check
    evaluation: Optional[bool] = None    # the faithfulness figures; None: when a judge or real images are given
    real_classes: Optional[list] = None  # the real images' class names (a class unit meets its own class)
    performance: Any = field(default_factory=dict)  # the Sampler's speed switches (autocast, channels_last, ...)

    def __post_init__(self) -> None:
        for name, kind in (("generator", Checkpoint), ("prior", Checkpoint), ("judge", JudgeSpec)):
            value = getattr(self, name)  # a path is shorthand for {ckpt: path}
            if value is None or isinstance(value, (str, PathLike)):
                setattr(self, name, kind(str(value) if value else None))
            elif isinstance(value, Mapping):
                setattr(self, name, kind(**value))
            elif not isinstance(value, kind):
                raise ConfigError(f"{name}={value!r}; expected a checkpoint path or a mapping {{ckpt: <checkpoint path>}}")
        for name in ("seeds", "steps", "top_k", "noise_seed", "record_every", "max_real"):
            value = getattr(self, name)
            least = 1 if name in ("seeds", "steps") else 0
            if value is None and name == "steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                what = "a positive number of seeds per unit" if name == "seeds" else (
                    "a positive integer" if least else "a non-negative integer")
                raise ConfigError(f"{name}={value}; expected {what}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"keep={self.keep!r}; expected best or last")

    @classmethod
    def of(cls, config: Mapping[str, Any] | None = None, **changes: Any) -> SynthesisSpec:
        """A spec from a config's conf/synthesis/ keys (CONFIG_FIELDS; a config holds more than a
        synthesis), with `changes` on top; an unknown change is a one-line error."""
        from omegaconf import OmegaConf

        def plain(value: Any) -> Any:
            return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

        return cls(**{k: plain(config[k]) for k in CONFIG_FIELDS if config and k in config}).but(**changes)

    def but(self, **changes: Any) -> SynthesisSpec:
        """This spec with `changes`, checked again; an unknown change is a one-line error."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"{unknown[0]}=...: not a synthesis setting; expected one of "
                              f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes) if changes else self


# The fields conf/synthesis/default.yaml declares (the others are set by a caller).
CONFIG_FIELDS = ("generator", "prior", "judge", "layer", "units", "seeds", "steps", "spatial", "pre_relu", "top_k",
                 "keep", "noise_seed")

# Flat keys of earlier method configs, and where each lives now (docs/decisions.md lists them).
MOVED_METHOD_KEYS = {
    **{key: f"step.{key}" for key in ("steps", "lr", "lr_end", "eps1", "eps2", "eps2_end", "eps3", "eps3_end",
                                      "normalize_gradient", "jitter", "scale", "rotate", "image_noise",
                                      "target_blur", "transparency", "redirect_relu")},
    "objective": "objective.kind", "selectivity": "objective.selectivity", "diversity": "objective.diversity",
    "diversity_layer": "objective.diversity_layer", "init": "space.init",
    "multifaceted_top_k": "space.top_k", "magnitude": "space.magnitude",
    "clip_quantile": "operators.clip.quantile", "decay": "operators.decay.factor",
    "image_operators": "operators.image",
}


def moved_key_message(key: str) -> str | None:
    """For `method.<key>` of an earlier config, one line naming its new spelling."""
    new = MOVED_METHOD_KEYS.get(key)
    return None if new is None else f"method.{key} is now method.{new}; expected method.{new}=<value>"


def register() -> None:
    """Make the schema the `method/_base` every conf/method/*.yaml starts from."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="method", name="_base", node=MethodConfig)
