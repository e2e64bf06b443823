"""Training augmentation: geometric moves the labels follow exactly, and intensity changes.

Geometric moves (flips, and swapping the in-plane axes: together the 8 rotations/reflections of
a square) are applied to the *input crop*; the raw network output is moved back before the
label window is cut from it. That is exact because the valid context is symmetric: raw output
voxel j of a flipped crop is raw output voxel o − 1 − j of the original one, and likewise for a
transposition of two equally long axes. The labels themselves are never resampled.

Intensity changes act on the globally normalised crop (real microscopy differs from image to
image in brightness, contrast, gamma, blur and noise). They are per *training crop*, which is
fine: at inference the normalisation is still one global map per image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..util._errors import ShiftSegError

__all__ = ["Augmentation", "NO_AUGMENTATION"]


@dataclass(frozen=True)
class Augmentation:
    """Random changes of each training crop (0 / False switches one off).

    flips : flip along every axis with probability 1/2.
    transpose : swap the last two axes with probability 1/2 (when the crop is square there).
    contrast : multiply by a factor in [1 − c, 1 + c] and shift by one in [−c/2, c/2].
    gamma : raise the non-negative part to a power in [e^−g, e^g].
    blur : Gaussian blur with sigma up to this (voxels), for a third of the crops.
    noise : add Gaussian noise with std up to this (normalised units).
    """

    flips: bool = True
    transpose: bool = True
    contrast: float = 0.3
    gamma: float = 0.3
    blur: float = 1.0
    noise: float = 0.05

    def __post_init__(self):
        for name in ("contrast", "gamma", "blur", "noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10:
                raise ShiftSegError(f"augmentation {name} must be a number in [0, 10), got {value!r}")
        if self.contrast >= 1:
            raise ShiftSegError(f"augmentation contrast must be below 1, got {self.contrast}")

    def to_dict(self) -> dict:
        return asdict(self)

    def moves(self, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
        """Random geometric move of a crop of ``shape``: (flipped axes, transposed?)."""
        axes = tuple(a for a in range(len(shape)) if self.flips and rng.random() < 0.5)
        square = len(shape) >= 2 and shape[-1] == shape[-2]
        transpose = bool(self.transpose and square and rng.random() < 0.5)
        return axes, transpose

    def intensity(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Contrast, gamma, blur and noise on one normalised crop (float32)."""
        if self.contrast:
            x = x * rng.uniform(1 - self.contrast, 1 + self.contrast) + rng.uniform(-self.contrast, self.contrast) / 2
        if self.gamma:
            power = float(np.exp(rng.uniform(-self.gamma, self.gamma)))
            x = np.where(x > 0, np.abs(x) ** power, x)
        if self.blur and rng.random() < 1 / 3:
            x = ndimage.gaussian_filter(x, rng.uniform(0.3, self.blur), mode="reflect")
        if self.noise:
            x = x + rng.normal(0.0, rng.uniform(0.0, self.noise), x.shape)
        return np.asarray(x, dtype=np.float32)


#: Nothing changes (``augment=False``).
NO_AUGMENTATION = Augmentation(flips=False, transpose=False, contrast=0.0, gamma=0.0, blur=0.0, noise=0.0)


def move(x: np.ndarray, axes: tuple[int, ...], transpose: bool, first_axis: int = 0) -> np.ndarray:
    """Apply a geometric move to the spatial axes of ``x`` (which start at ``first_axis``)."""
    if axes:
        x = np.flip(x, tuple(a + first_axis for a in axes))
    if transpose:
        x = np.swapaxes(x, -1, -2)
    return x


def unmove(out, axes: tuple[int, ...], transpose: bool, vector_channels: int = 0):
    """Undo :func:`move` on one raw output (C, *spatial) torch tensor (realigns it with labels).

    The first ``vector_channels`` channels are *vectors* along the spatial axes (the offsets of
    a spatial head, one channel per axis). Moving them back is not enough: an offset the network
    gave along a flipped axis points the other way in the original frame, and a transposition
    swaps which axis a component belongs to. Without turning the vectors too, a flipped crop asks
    the network for the opposite of what an unflipped one asks, and it learns offsets of zero.
    """
    d = len(out.shape) - 1
    if transpose:
        out = out.transpose(-1, -2)
        if vector_channels:
            order = list(range(out.shape[0]))
            order[d - 2], order[d - 1] = order[d - 1], order[d - 2]
            out = out[order]
    if axes:
        out = out.flip([a + 1 for a in axes])
        if vector_channels:
            sign = out.new_ones(out.shape[0])  # the tensor's dtype and device: no torch import here
            sign[list(axes)] = -1
            out = out * sign.reshape(-1, *(1,) * d)
    return out
