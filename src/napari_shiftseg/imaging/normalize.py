"""Global intensity normalisation.

Statistics are computed once per image (on a strided subsample, so a lazy dask or zarr volume is
only partly read) and then applied identically to every tile. Per-tile normalisation would give
each tile a different input function and break exact tile-and-stitch (THEORY.md, result 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..util._errors import ShiftSegError


@dataclass(frozen=True)
class Normalization:
    """Map ``low`` → 0 and ``high`` → 1 (percentiles of the whole image).

    For a multi-channel network ``low`` and ``high`` are tuples, one value per channel, and
    the arrays they apply to hold the channels on their first axis.
    """

    low: float | tuple[float, ...]
    high: float | tuple[float, ...]

    @property
    def offset_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, scale) as float32 arrays of shape (channels,) (a flat scale stays 1)."""
        low = np.atleast_1d(np.asarray(self.low, dtype=np.float32))
        scale = np.atleast_1d(np.asarray(self.high, dtype=np.float32)) - low
        return low, np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)

    def __call__(self, x):
        low, scale = self.offset_scale
        if low.size == 1:
            return (x - low[0]) / scale[0]
        shape = (-1,) + (1,) * (np.ndim(x) - 1)  # channels first
        return (x - low.reshape(shape)) / scale.reshape(shape)


def _subsample(image, max_samples: int):
    """Strided view with at most ~``max_samples`` voxels (lazy for dask/zarr sources)."""
    step = max(1, math.ceil((int(np.prod(image.shape)) / max_samples) ** (1 / image.ndim)))
    sample = image[(slice(None, None, step),) * image.ndim]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    return np.asarray(sample, dtype=np.float64)


def percentile_normalization(image, low: float = 1.0, high: float = 99.8,
                             max_samples: int = 2_000_000, channels_first: bool = False) -> Normalization:
    """Percentile statistics of ``image`` (numpy, dask or zarr), refusing NaN/inf and empty images.

    ``channels_first``: one pair of percentiles per channel (first axis), for multi-channel
    networks (a bright channel must not squash a dim one).
    """
    if channels_first and image.shape[0] > 1:
        per = [percentile_normalization(image[c], low, high, max_samples) for c in range(image.shape[0])]
        # one channel each: scalar low / high
        return Normalization(tuple(cast(float, n.low) for n in per), tuple(cast(float, n.high) for n in per))
    if channels_first:
        image = image[0]
    if int(np.prod(image.shape)) == 0:
        raise ShiftSegError(f"the image is empty (shape {tuple(image.shape)})")
    real = np.issubdtype(image.dtype, np.number) or image.dtype == bool
    if not real or np.issubdtype(image.dtype, np.complexfloating):
        raise ShiftSegError(f"the image must hold real numbers, got dtype {image.dtype}")
    sample = _subsample(image, max_samples)
    if not np.isfinite(sample).all():
        raise ShiftSegError("the image contains NaN or infinite values; replace them (e.g. with 0) first")
    lo, hi = np.percentile(sample, [low, high])
    return Normalization(float(lo), float(hi))


def recorded_normalization(image, meta: dict | None, name: str = "the model",
                           channels_first: bool = False) -> Normalization:
    """The normalisation a model was trained with (its ``meta["normalization"]``), for ``image``.

    Models record the percentiles they were trained with; inference must apply the same ones
    to the *whole* image, whatever path it takes (tiled, whole-image, widget preview).
    """
    low, high = recorded_percentiles(meta, name)
    return percentile_normalization(image, low, high, channels_first=channels_first)


def recorded_percentiles(meta: dict | None, name: str = "the model") -> tuple[float, float]:
    """(low, high) percentiles a model records; without a record, the 1/99.8 defaults every
    model so far was trained with."""
    record = (meta or {}).get("normalization") or {}
    if not isinstance(record, dict):
        raise ShiftSegError(f"{name} records an unreadable normalisation {record!r}")
    if record.get("method", "percentile") != "percentile":
        raise ShiftSegError(f"{name} asks for normalisation {record.get('method')!r}, which this "
                            "version of napari-shiftseg does not know")
    try:
        low, high = float(record.get("low", 1.0)), float(record.get("high", 99.8))
    except (TypeError, ValueError):
        raise ShiftSegError(f"{name} records unreadable normalisation percentiles {record!r}") from None
    if not 0.0 <= low < high <= 100.0:
        raise ShiftSegError(f"{name} records impossible percentiles low={low}, high={high}")
    return low, high
