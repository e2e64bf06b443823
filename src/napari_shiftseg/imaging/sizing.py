"""Object size measured from the image itself, not from a first segmentation pass.

The size used to pick the resampling factor (:mod:`napari_shiftseg.imaging.rescale`) used to come from
the model's own first pass. When that pass over-split (real stacks of 40-75 px nuclei, far from
the 14 px the 3D model learnt), the estimate shrank, the image was *enlarged*, and the result
got worse: 977 objects for 10 nuclei (issue 24). This estimate never runs the network:

1. the image is read on a pyramid of coarse grids (block means of k x k pixels, z blocks
   chosen so coarse voxels are about cubic), coarsest first; distances are in pixels of the
   finest in-plane axis, so the voxel size is taken into account;
2. foreground = Gaussian-smoothed image above its Otsu threshold, holes filled plane by plane
   (textured chromatin and nucleoli leave holes);
3. the Euclidean distance transform of the foreground (anisotropic sampling) peaks at each
   nucleus' centre with the radius of the largest ball inside it; touching nuclei keep one peak
   each because the neck between them is narrower than either;
4. peaks are taken greedily from the largest, dropping every peak inside a ball already taken
   (one per nucleus; ridges of elongated nuclei and plateaus give no extra votes);
5. the diameter is :data:`CALIBRATION` x twice the median inscribed radius (the smoothing and
   the Otsu threshold on blurred edges make the mask a little larger than the nucleus, which
   offsets the inscribed radius of an elongated nucleus being smaller than its equivalent one);
6. the answer is the coarsest level at which the nuclei are resolved (:data:`RESOLVED_PX`):
   block means average out noise and texture, which at fine levels break nuclei into specks.

Cost: a distance transform of at most :data:`LEVEL_VOXELS` voxels per level (a central crop),
whatever the volume: 0.1-2 s here. Measured against the true median diameter in ``benchmarks/bench_volumes.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..util._errors import ShiftSegError

__all__ = ["SizeEstimate", "estimate_size", "planes_spanned", "CALIBRATION", "RESOLVED_PX"]

#: Equivalent diameter / (2 x median inscribed radius), calibrated on generated nuclei
#: (``synth_stacks`` with non-benchmark seeds; elongation up to 1.6, irregular outlines).
CALIBRATION = 1.0

#: Block sizes (px per in-plane block) the image is measured at, and the smallest coarse grid.
LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
MIN_GRID = 32

#: The answer is the coarsest level at which the nuclei measure at least this many coarse
#: pixels across. Coarser, nuclei blur into their neighbours and under-measure (~4-5 px);
#: finer, chromatin texture and noise break them into ~6 px specks at every level, so a
#: fine level can look "resolved" by accident: coarsest first avoids it.
RESOLVED_PX = 5.5

#: Coarse voxels measured per level at most (a central crop beyond it).
LEVEL_VOXELS = 2_000_000

#: Image voxels read at most, once, for all levels (a central crop beyond it). Coarse levels
#: used to read their crop again each, and a coarse crop of 2·10⁶ coarse voxels is the whole
#: image: ten reads of a large volume. Every stack measured in benchmarks/ is smaller, so this
#: only bounds the cost of larger ones (issue 27: the estimate should cost little).
READ_VOXELS = 32_000_000

#: A resolved level is kept when the next finer one measures at most this much less.
CONFIRM_RATIO = 1.4

#: Levels with more foreground than this are not read (see estimate_size).
MAX_FOREGROUND = 0.6

#: A stack less than this many (estimated) diameters deep holds cut nuclei (a thin slab).
SLAB_DIAMETERS = 1.5

#: Fewer nuclei than this give no estimate.
MIN_NUCLEI = 3


@dataclass(frozen=True)
class SizeEstimate:
    """The median nucleus diameter (px of the finest in-plane axis) and how it was found."""

    diameter: float
    n_objects: int
    foreground: float  # fraction of the measured region above the threshold
    thin: bool = False  # a stack thinner than its nuclei: measured on the z projection

    def describe(self) -> str:
        where = "from the image's z projection: the stack is thinner than its nuclei" if self.thin \
            else "from the image"
        return f"nuclei ≈ {self.diameter:.0f} px across ({where})"


def planes_spanned(diameter: float, voxel_size=None) -> float:
    """How many z planes a nucleus ``diameter`` px across (px of the finest in-plane axis)
    spans in a stack of ``voxel_size`` (z, y, x); the diameter itself for cubic or unknown voxels."""
    if voxel_size is None or len(voxel_size) != 3:
        return float(diameter)
    return float(diameter) * min(float(v) for v in voxel_size[1:]) / float(voxel_size[0])


def _relative_spacing(voxel_size, ndim: int) -> np.ndarray:
    if voxel_size is None:
        return np.ones(ndim)
    values = np.asarray([float(v) for v in tuple(voxel_size)[-ndim:]])
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ShiftSegError(f"the voxel size must be {ndim} positive numbers, got {voxel_size!r}")
    return values / values[-2:].min()


def _central_crop(shape, limit) -> tuple[slice, ...]:
    return tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + min(n, c)) for n, c in zip(shape, limit))


def _coarse(image, region, factors) -> np.ndarray:
    """``image[region]`` as float32 block means over ``factors`` voxels (the ragged edge
    dropped). A dask image stays lazy until the coarse grid: only ~LEVEL_VOXELS values are ever
    held, whatever the volume."""
    part = image[region]
    factors = {a: min(max(1, int(f)), n) for a, (f, n) in enumerate(zip(factors, part.shape))}
    if hasattr(part, "compute"):
        import dask.array as da

        part = part.astype(np.float32)
        if any(f > 1 for f in factors.values()):
            part = da.coarsen(np.mean, part, factors, trim_excess=True)
        return np.asarray(part.compute(), dtype=np.float32)
    part = np.asarray(part)
    shape = tuple(n // factors[a] for a, n in enumerate(part.shape))
    cut = part[tuple(slice(0, s * factors[a]) for a, s in enumerate(shape))]
    split = [v for a, s in enumerate(shape) for v in (s, factors[a])]
    return cut.reshape(split).mean(axis=tuple(range(1, 2 * len(shape), 2)), dtype=np.float32)


def _foreground(image: np.ndarray, spacing: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(image, tuple(sigma / s for s in spacing))
    if not np.all(np.isfinite(smooth)) or float(smooth.max()) <= float(smooth.min()):
        return np.zeros(image.shape, bool)
    mask = smooth > threshold_otsu(smooth)
    if mask.ndim == 3:
        for z in range(mask.shape[0]):
            mask[z] = ndimage.binary_fill_holes(mask[z])
    else:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def _inscribed_radii(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """One inscribed radius (px) per nucleus: distance-transform peaks, greedy by size."""
    if not mask.any():
        return np.zeros(0)
    distance = ndimage.distance_transform_edt(mask, sampling=spacing)
    peaks = (distance == ndimage.maximum_filter(distance, size=3)) & (distance >= spacing.max())
    coords = np.argwhere(peaks)
    radii = distance[peaks]
    order = np.argsort(radii)[::-1]
    coords, radii = coords[order] * spacing, radii[order]
    alive = np.ones(len(radii), bool)
    kept = []
    # The peaks inside each kept ball come from a k-d tree, then the same strict test as a
    # scan of all later peaks: that scan was quadratic in the peaks (a third of the estimate's
    # time on a 17 Mvoxel stack of 4000 nuclei, issue 27).
    from scipy.spatial import cKDTree

    if not len(radii):
        return np.zeros(0)
    tree = cKDTree(coords)
    for i in range(len(radii)):
        if not alive[i]:
            continue
        kept.append(radii[i])
        near = np.asarray(tree.query_ball_point(coords[i], radii[i]), dtype=np.int64)
        near = near[near > i]
        close = near[np.sum((coords[near] - coords[i]) ** 2, axis=1) < radii[i] ** 2]
        alive[close] = False
    return np.asarray(kept)


def _measure(image, region, block, spacing, sigma=None) -> tuple[float | None, int, float]:
    part = _coarse(image, region, block)
    grid = spacing * np.asarray(block, dtype=float)  # coarse voxel size in px
    mask = _foreground(part, grid, max(float(grid[-2:].min()), sigma or 0.0))
    radii = _inscribed_radii(mask, grid)
    # Specks of one coarse voxel are noise, not nuclei.
    radii = radii[radii >= 1.5 * grid[-2:].min()]
    if radii.size < MIN_NUCLEI:
        return None, int(radii.size), float(mask.mean()) if mask.size else 0.0
    return float(CALIBRATION * 2 * np.median(radii)), int(radii.size), float(mask.mean())


def _read_once(image):
    """``image`` in memory as float32, or its central crop of :data:`READ_VOXELS` voxels (all of
    its planes when they fit): every level is then a block mean of memory, not another read."""
    shape = tuple(int(n) for n in image.shape)
    if math.prod(shape) > READ_VOXELS:
        planes = min(shape[0], READ_VOXELS // MIN_GRID**2) if len(shape) == 3 else 1
        side = int(math.sqrt(READ_VOXELS / planes))
        limit = ((planes,) if len(shape) == 3 else ()) + (side, side)
        image = image[_central_crop(shape, limit)]
    if hasattr(image, "compute"):
        return np.asarray(image.astype(np.float32).compute())
    return np.asarray(image, dtype=np.float32)


def _levels(shape: np.ndarray) -> list[int]:
    """Block sizes to try, coarsest first: the image must stay >= MIN_GRID px in-plane."""
    return [k for k in reversed(LEVELS) if shape[-2:].min() / k >= MIN_GRID]


def estimate_size(image, voxel_size=None) -> SizeEstimate | None:
    """Median nucleus diameter of ``image`` (2D or 3D, numpy or dask, spatial axes only) in
    pixels of its finest in-plane axis, from the image alone; None when fewer than
    :data:`MIN_NUCLEI` nuclei stand out. ``voxel_size`` (one number per axis, any unit) makes
    the measure anisotropic: a z step 5x the pixel counts as 5 px along z.
    """
    ndim = image.ndim
    if ndim not in (2, 3):
        raise ShiftSegError(f"the size estimate needs a 2D or 3D image, got shape {tuple(image.shape)}")
    spacing = _relative_spacing(voxel_size, ndim)
    image = _read_once(image)
    shape = np.asarray(image.shape)
    # (diameter, n, fg) of the level above, resolved, awaiting confirmation; and the coarsest
    # resolved level: the answer when no level is confirmed.
    found: tuple[float, int, float] | None = None
    first: tuple[float, int, float] | None = None
    for k in _levels(shape):
        block = np.ones(ndim, int)
        block[-2:] = k
        if ndim == 3:  # z blocks keep coarse voxels roughly cubic, never finer than the stack
            block[0] = max(1, int(round(k / spacing[0])))
        planes = math.ceil(shape[0] / block[0]) if ndim == 3 else 1
        side = int(math.sqrt(LEVEL_VOXELS / planes)) * k  # bounded cost per level: a central crop
        limit = ((int(shape[0]),) if ndim == 3 else ()) + (side, side)
        measured = _measure(image, _central_crop(shape, limit), block, spacing)
        diameter = measured[0]
        resolved = (diameter, measured[1], measured[2]) if diameter is not None else None
        if found is not None:
            # Confirmed when the next finer level sees about the same size; clumps of small
            # nuclei on a too coarse grid measure 1.5-5x what the finer level does.
            if diameter is not None and found[0] / diameter <= CONFIRM_RATIO:
                break
            found = None
        # A level where most of the image is "foreground" has blurred the nuclei into one
        # carpet: its Otsu threshold splits noise, not nuclei from background.
        if resolved is not None and resolved[0] / k >= RESOLVED_PX and resolved[2] <= MAX_FOREGROUND:
            found = resolved
            first = first or resolved
    else:
        # No level confirmed by a finer one. The finest level cannot be (texture makes ~6 px
        # specks there), so the coarsest resolved level is the answer, or the finest's when it
        # is the only one (nuclei of a few px).
        found = first
    if found is None:
        return None
    estimate = SizeEstimate(*found)
    if ndim == 3 and shape[0] * spacing[0] < SLAB_DIAMETERS * estimate.diameter:
        # A stack thinner than its nuclei cuts every one of them: the ball inside a nucleus is
        # limited by the stack, not the nucleus. Its in-plane size is what the network sees.
        flat = estimate_size(image.max(axis=0))  # the plane of maxima of what was read
        flat = flat or estimate
        return SizeEstimate(flat.diameter, flat.n_objects, flat.foreground, thin=True)
    return estimate
