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

from ..util._errors import ShiftSegError

__all__ = ["SegmentationSettings", "BANDWIDTH_OF_DELTA_D", "DEFAULT_MIN_SIZE"]

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
