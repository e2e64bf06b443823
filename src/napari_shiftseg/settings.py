"""Segmentation settings: one owner for how a model's embeddings become instances.

A model file records the settings that were tuned for it at the end of training (bandwidth,
foreground threshold, smallest object, post-processing), as StarDist records its thresholds.
Everything that segments (``segment_array``, ``shiftseg segment``/``evaluate``, the widgets)
asks :meth:`SegmentationSettings.of` instead of re-deriving fallbacks, and anything a user
overrides is one :meth:`~SegmentationSettings.replace` away.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ._errors import ShiftSegError

__all__ = ["SegmentationSettings", "BANDWIDTH_OF_DELTA_D", "DEFAULT_MIN_SIZE", "TRAINING_DEFAULTS",
           "CONTINUE_DEFAULTS", "BATCH_SIZE_3D", "DEFAULT_INIT", "training_defaults"]

#: How ``shiftseg train`` and the Train widget train a *new* network when not told otherwise
#: (chosen on the BBBC007 dev set and synthetic nuclei: docs/MODELS.md); ``validation`` is the
#: held-out fraction. Here, not in ``train.py``, so the CLI can build its parser without importing torch.
TRAINING_DEFAULTS = {"steps": 3000, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": 4,
                     "validation": 0.25}

#: Continuing a trained model (the bundled one, a file, the Segment widget's): fewer steps at a
#: lower rate. On one annotated BBBC007 crop, 1000 steps at 3e-4 from the bundled 2D model beat a
#: new network's 3000 at 1e-3 on the 10 other dev images for each of three crops (0.901 / 0.925 /
#: 0.904 against 0.879 / 0.905 / 0.800) in 40 s instead of 110; in 3D likewise (docs/MODELS.md).
CONTINUE_DEFAULTS = {"steps": 1000, "lr": 3e-4}

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


#: Fraction of the push margin used as mean-shift bandwidth when the model does not say.
#: Trained means are >= 2·delta_d apart and pixels lie within ~delta_v of their mean, so a
#: bandwidth below delta_d separates clusters with room to spare.
BANDWIDTH_OF_DELTA_D = 2.0 / 3.0

#: Smallest object kept (voxels) when the model records no ``min_size``.
DEFAULT_MIN_SIZE = 10


@dataclass(frozen=True)
class SegmentationSettings:
    """How embeddings become instances.

    bandwidth : mean-shift kernel radius in embedding units.
    fg_threshold : foreground probability above which a voxel is clustered.
    min_size : objects smaller than this (voxels) are dropped, or absorbed (``absorb_small``).
    merge_distance : adjacent fragments whose mean embeddings are closer than this are merged
        (0 = off).
    absorb_small : small fragments touching an object join the neighbour they touch most.
    fill_holes : background enclosed by one object becomes part of it.
    """

    bandwidth: float = 2.0
    fg_threshold: float = 0.5
    min_size: int = DEFAULT_MIN_SIZE
    merge_distance: float = 0.0
    absorb_small: bool = False
    fill_holes: bool = False

    def __post_init__(self):
        checks = {
            "bandwidth": (self.bandwidth, lambda v: v > 0),
            "fg_threshold": (self.fg_threshold, lambda v: 0 < v < 1),
            "min_size": (self.min_size, lambda v: v >= 0 and float(v).is_integer()),
            "merge_distance": (self.merge_distance, lambda v: v >= 0),
        }
        for name, (value, ok) in checks.items():
            number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not number or not ok(value):
                raise ShiftSegError(f"segmentation setting {name} has an impossible value {value!r}")
        object.__setattr__(self, "min_size", int(self.min_size))
        for name in ("absorb_small", "fill_holes"):
            if not isinstance(getattr(self, name), bool):
                raise ShiftSegError(f"segmentation setting {name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def of(cls, model) -> SegmentationSettings:
        """The settings recorded in ``model.meta`` (a Model or a ModelInfo); what is missing
        falls back to defaults."""
        return cls.of_meta(getattr(model, "meta", None) or {}, getattr(model, "name", "the model"))

    @classmethod
    def of_meta(cls, meta: dict, name: str = "the model") -> SegmentationSettings:
        """The settings a model file's ``meta`` records; what is missing falls back to defaults.

        The bandwidth fallback is 2/3 of the model's push margin delta_d (2.0 for delta_d 3).
        This is the one place a missing setting gets its value.
        """
        if not isinstance(meta, dict):
            raise ShiftSegError("the model's metadata is not a dictionary")
        loss = meta.get("loss")
        if not isinstance(loss, dict):
            loss = {}
        values: dict[str, Any] = {"bandwidth": BANDWIDTH_OF_DELTA_D * float(loss.get("delta_d", 3.0))}
        for field in dataclasses.fields(cls):
            if meta.get(field.name) is not None:
                values[field.name] = meta[field.name]
        try:
            return cls(**values)
        except ShiftSegError as err:
            raise ShiftSegError(f"{name}: {err}") from None

    def replace(self, **changes) -> SegmentationSettings:
        """A copy with the given settings changed (``None`` values mean "keep")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_meta(self) -> dict:
        """The entries recorded in a model file's metadata."""
        return dataclasses.asdict(self)
