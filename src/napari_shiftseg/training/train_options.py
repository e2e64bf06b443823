"""What a training run is asked to do, as two small immutable value objects.

:func:`~napari_shiftseg.training.train.train` used to take 32 keyword arguments; the CLI, the Train
widget, the bundled-model script and the studies each passed their own subset. They now build
one :class:`TrainOptions` (with its :class:`LossSettings`), which owns the defaults, checks the
numbers once (a biologist's typo fails before any image is padded), and records itself in the
model file. ``train(..., steps=500)`` still works: keywords are applied to the options with
:meth:`TrainOptions.with_overrides`, so call sites name only what they change.

This module also owns the defaults ``shiftseg train`` and the Train widget train with
(:data:`TRAINING_DEFAULTS`, :func:`training_defaults`, :meth:`TrainOptions.recommended`). It
imports no torch, so the CLI builds its parser and the widget its controls from it for free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..util._errors import ShiftSegError
from ..util._options import with_overrides
from ..util.validate import finite
from .augment import NO_AUGMENTATION, Augmentation

__all__ = ["LossSettings", "TrainOptions", "LR_SCHEDULES", "TRAINING_DEFAULTS", "CONTINUE_DEFAULTS",
           "BATCH_SIZE_3D", "DEFAULT_INIT", "training_defaults"]

LR_SCHEDULES = ("constant", "cosine")

#: How ``shiftseg train`` and the Train widget train a *new* network when not told otherwise
#: (chosen on the BBBC007 dev set and synthetic nuclei: docs/MODELS.md); ``validation`` is the
#: held-out fraction. :class:`TrainOptions`' own field defaults are what :func:`~napari_shiftseg.
#: train.train` does when told nothing (the library API: short, constant rate, nothing held out).
TRAINING_DEFAULTS: dict[str, Any] = {"steps": 3000, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": 4,
                                     "validation": 0.25}

#: Continuing a trained model (the bundled one, a file, the Segment widget's): fewer steps at a
#: lower rate. On one annotated BBBC007 crop, 1000 steps at 3e-4 from the bundled 2D model beat a
#: new network's 3000 at 1e-3 on the 10 other dev images for each of three crops (0.901 / 0.925 /
#: 0.904 against 0.879 / 0.905 / 0.800) in 40 s instead of 110; in 3D likewise (docs/MODELS.md).
CONTINUE_DEFAULTS: dict[str, Any] = {"steps": 1000, "lr": 3e-4}

#: A 3D crop costs about ten 2D ones: half the batch.
BATCH_SIZE_3D = 2

#: What training on annotated images starts from when not told (``--init``): the bundled nuclei
#: model of the data's dimensionality. Synthetic data, network options or several channels
#: (the bundled models take one) start a new network instead.
DEFAULT_INIT = "bundled"


def training_defaults(ndim: int, continued: bool) -> dict[str, Any]:
    """Steps, rate, schedule, batch and held-out fraction for a new (``continued`` False) or
    continued network on ``ndim``-D data: :data:`TRAINING_DEFAULTS`, then
    :data:`CONTINUE_DEFAULTS` and :data:`BATCH_SIZE_3D` where they apply."""
    defaults = {**TRAINING_DEFAULTS, **(CONTINUE_DEFAULTS if continued else {})}
    if ndim == 3:
        defaults["batch_size"] = BATCH_SIZE_3D
    return defaults


@dataclass(frozen=True)
class LossSettings:
    """Discriminative-loss margins and weights (THEORY.md), plus the foreground BCE weight.

    delta_v, delta_d : pull and push margins (embedding units).
    alpha, beta, gamma : weights of pull, push and the regulariser.
    foreground_weight : weight of the foreground BCE (models with a foreground head).
    background_as_instance : background is one more instance in the loss (the reference).
    push_per_instance : normalise the push term per instance instead of per pair (the paper);
        off by default: on the dev set it separated crowded nuclei but blew up every object's
        spread (docs/MODELS.md).
    """

    delta_v: float = 0.5
    delta_d: float = 3.0
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1e-4
    foreground_weight: float = 1.0
    background_as_instance: bool = False
    push_per_instance: bool = False

    def __post_init__(self):
        for name in ("delta_v", "delta_d", "alpha", "beta", "gamma", "foreground_weight"):
            object.__setattr__(self, name, finite(name, getattr(self, name), allow_zero=True))
        if self.delta_d <= 0:
            raise ShiftSegError(f"delta_d (the push margin) must be positive, got {self.delta_d}")
        object.__setattr__(self, "background_as_instance", bool(self.background_as_instance))
        object.__setattr__(self, "push_per_instance", bool(self.push_per_instance))

    def loss_arguments(self) -> dict[str, Any]:
        """Keywords of :func:`~napari_shiftseg.training.loss.discriminative_loss`."""
        out = dataclasses.asdict(self)
        del out["foreground_weight"]
        return out

    def to_meta(self) -> dict[str, Any]:
        """As recorded in a model file (``meta["loss"]``)."""
        return dataclasses.asdict(self)



@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run is asked to do, apart from its data and its callbacks.

    steps : optimiser steps (each one batch of random crops).
    lr : Adam learning rate (the reference uses 0.5e-4 … 1e-4).
    lr_schedule : "constant", or "cosine" (decay to 0 at ``steps``; settles the embeddings at the
        end of a fixed-length run).
    batch_size : crops per step.
    seed : seeds weights, crops, augmentation and synthetic data: equal seeds, equal models.
    output_window : labelled output window per axis (**must be larger than f^l** unless
        ``allow_small_window``); None: sized to the annotated objects
        (:func:`~napari_shiftseg.training.train.suggest_training_window`).
    allow_small_window : allow windows <= f^l (reproduces the paper's seam failure).
    augment : True (the default :class:`~napari_shiftseg.training.augment.Augmentation`), False (none),
        or an Augmentation of your own.
    noise_std : if > 0 (and ``augment``), the largest std of the Gaussian noise added to the
        normalised crops (overrides the augmentation's own ``noise``).
    validation : fraction of the annotated data held out (whole images when there are 4 or more,
        else a band of each; :func:`~napari_shiftseg.training.tuning.split_validation`). The best
        checkpoint on it is kept, and with ``tune`` the segmentation settings are tuned on it.
        0 (default here; :data:`TRAINING_DEFAULTS`, which the CLI and the widget use, holds out
        25 %) trains on everything.
    validate_every : steps between validations (None: a tenth of the run, at least 25).
    tune : tune bandwidth, foreground threshold, smallest object and post-processing on the
        held-out data at the end (only with validation).
    checkpoint_every, checkpoint_path : save the model so far (atomically) every
        ``checkpoint_every`` steps to ``checkpoint_path``.
    threads : torch CPU threads while training (restored afterwards); None: leave as is.
    loss : the loss' margins and weights (:class:`LossSettings`).
    command : command line recorded in the model file.
    """

    steps: int = 1000
    lr: float = 1e-4
    lr_schedule: str = "constant"
    batch_size: int = 1
    seed: int = 0
    output_window: int | Sequence[int] | None = None
    allow_small_window: bool = False
    augment: bool | Augmentation = True
    noise_std: float = 0.0
    validation: float = 0.0
    validate_every: int | None = None
    tune: bool = True
    checkpoint_every: int | None = None
    checkpoint_path: Any = None
    threads: int | None = None
    loss: LossSettings = field(default_factory=LossSettings)
    command: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "steps", finite("steps", self.steps, int))
        set_(self, "batch_size", finite("batch_size", self.batch_size, int))
        set_(self, "lr", finite("lr", self.lr))
        set_(self, "seed", finite("seed", self.seed, int, positive=False))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ShiftSegError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        set_(self, "noise_std", finite("noise_std", self.noise_std, allow_zero=True))
        validation = finite("validation", self.validation, allow_zero=True)
        if validation >= 1:
            raise ShiftSegError(f"validation is the fraction held out, below 1; got {validation}")
        set_(self, "validation", validation)
        for name in ("validate_every", "checkpoint_every", "threads"):
            if getattr(self, name) is not None:
                set_(self, name, finite(name, getattr(self, name), int))
        if not isinstance(self.loss, LossSettings):
            raise TypeError(f"loss must be a LossSettings, got {type(self.loss).__name__}")

    def augmentation(self) -> Augmentation:
        """The augmentation to apply (``augment`` resolved, ``noise_std`` folded in)."""
        augment = self.augment
        if not isinstance(augment, Augmentation):
            augment = Augmentation() if augment else NO_AUGMENTATION
        if self.noise_std > 0 and augment != NO_AUGMENTATION:
            augment = dataclasses.replace(augment, noise=float(self.noise_std))
        return augment

    @classmethod
    def recommended(cls, ndim: int, continued: bool, **given) -> TrainOptions:
        """What ``shiftseg train`` and the Train widget run: :func:`training_defaults` for
        ``ndim``-D data and a new or ``continued`` network, with the ``given`` fields (None:
        not given) on top."""
        return cls(**training_defaults(ndim, continued)).with_overrides(
            **{name: value for name, value in given.items() if value is not None})

    def with_overrides(self, **overrides) -> TrainOptions:
        """A copy with these fields changed; loss fields (``delta_d=...``) may be given flat."""
        return with_overrides(self, "train", overrides)

    def to_meta(self) -> dict[str, Any]:
        """The run's settings as recorded in a model file (keys as before this object existed)."""
        return {"loss": self.loss.to_meta(), "lr": self.lr, "lr_schedule": self.lr_schedule,
                "batch_size": self.batch_size, "seed": self.seed,
                "augment": self.augmentation().to_dict(), "noise_std": self.noise_std}
