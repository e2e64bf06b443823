"""The image's size estimate, checked by the model on a central crop (3D models).

:func:`~napari_shiftseg.imaging.sizing.estimate_size` reads nuclei sizes from the image alone
and lands within ±25 % of the truth, but a 3D model is far more sensitive than that: on the
crowded 8 px dev stack (seed 8107) AP@0.5 is 0.37 at the estimate (0.90 of the true size) and
0.47-0.48 at the true size; on the 30 px one (8102) 0.86 at the estimate (0.80) and 0.96 at
the truth (benchmarks/RESULTS.md section 17). The model itself measures better: run at the
image's estimate (0.80-1.13 of the truth on the seven dev stacks), the median equivalent
diameter of its objects is 0.96-1.05 of the truth, because near its own scale the model finds
a nucleus whole (further off it cuts or merges: at 0.72 of the truth it measures 0.75).

So, for a 3D model and an estimated size, one pass of the model on a central crop of the image
(at most :data:`CROP_VOXELS` voxels as the network sees them, at the estimate's scale) measures
the median object diameter again, and the run uses it. The first pass is never trusted beyond
:data:`MAX_CHANGE` of the image's estimate: a model that over-splits a badly scaled image
measures small pieces, and following it would enlarge the image further (the failure issue 24
began with). The crop is fixed by the image's shape, and its run is exact and chunking-independent
like any run, so the answer does not depend on tiles, chunks or clusters.
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["CROP_VOXELS", "MAX_CHANGE", "MIN_OBJECTS", "crop_region", "crop_labels",
           "median_diameter_px", "refine_diameter", "refiner"]

#: Voxels of the crop as the network sees it (at the estimate's scale): ~250 nuclei of 14 px.
CROP_VOXELS = 2**20

#: The checked size stays within this factor of the image's estimate.
MAX_CHANGE = 1.33

#: Fewer objects than this in the crop keep the image's estimate.
MIN_OBJECTS = 10

#: Tile of the crop's run: fixed, so the answer never depends on the user's tile.
CROP_TILE = 64


def crop_region(shape, factors, limit: int = CROP_VOXELS) -> tuple[slice, ...]:
    """The central crop of an image of ``shape`` that holds at most ``limit`` voxels once
    resampled by ``factors`` per axis: one side length (in network voxels) for every axis
    longer than it, found by bisection, so a thin stack keeps all its planes."""
    net = [n * f for n, f in zip(shape, factors)]
    if math.prod(net) <= limit:
        return tuple(slice(0, int(n)) for n in shape)
    low, high = 1.0, max(net)
    for _ in range(60):
        side = (low + high) / 2
        if math.prod(min(n, side) for n in net) > limit:
            high = side
        else:
            low = side
    out = []
    for n, f in zip(shape, factors):
        size = min(int(n), max(1, int(low / f)))
        start = (int(n) - size) // 2
        out.append(slice(start, start + size))
    return tuple(out)


def median_diameter_px(labels: np.ndarray, voxel_size=None) -> tuple[float, int]:
    """(median equivalent diameter in px of the finest in-plane axis, object count) of a 3D
    label image whose voxels are ``voxel_size`` (z, y, x; None: cubic)."""
    from ..imaging.metrics import median_diameter

    count = int(np.count_nonzero(np.bincount(np.asarray(labels).ravel())[1:]))
    ratio = 1.0
    if voxel_size is not None:
        z, y, x = (float(v) for v in voxel_size)
        ratio = z * y * x / min(y, x) ** 3  # one voxel in px³ of the finest in-plane axis
    return median_diameter([labels]) * ratio ** (1 / 3), count


def crop_labels(crop, model, factors, device: str = "auto", cancel=None) -> np.ndarray:
    """Instances of ``crop`` (a dask array, kept lazy: at a factor of 0.1 the image's crop is
    1000x the network's voxels) resampled by ``factors`` (on that grid), as a run segments them:
    the model's recorded normalisation and settings, default mean-shift seeding, exact tiles of
    :data:`CROP_TILE`. The session is not used here: it plans its resampling with this module."""
    import dask.array as da

    from ..imaging import rescale
    from ..imaging.normalize import recorded_normalization
    from ..network.devices import resolve_device
    from ..network.settings import SegmentationSettings
    from ..util import progress
    from . import instances, predict
    from .segment_options import ClusterOptions

    working = da.asarray(crop)
    if any(f != 1.0 for f in factors):
        working = rescale.resize_image(working, shape=rescale.working_shape(crop.shape, factors))
    norm = recorded_normalization(working, model.meta, model.name)
    lazy = predict.predict_embeddings(working, model, tile=CROP_TILE, device=device, normalization=norm)
    (embeddings,) = progress.compute(lazy, cancel=cancel or threading.Event())
    labels, _ = instances.segment_instances(embeddings, SegmentationSettings.of(model), ClusterOptions(),
                                            model.config.foreground_head, device=str(resolve_device(device)),
                                            position_scale=model.config.positions)
    (labels,) = progress.compute(labels, cancel=cancel or threading.Event())
    return np.asarray(labels)


def refine_diameter(image, model, diameter: float, factors, voxel_size=None, device: str = "auto",
                    cancel=None) -> float | None:
    """The median diameter (px) of what ``model`` finds in the central crop of ``image`` (voxels
    ``voxel_size``, None: cubic) run at ``diameter`` (the image's estimate; ``factors`` the run's
    per-axis resampling there), within :data:`MAX_CHANGE` of it; None when the crop holds fewer
    than :data:`MIN_OBJECTS` objects. The model's recorded settings, not the run's: the size
    decides the resampled image, hence the embeddings, which must not change when only the
    clustering settings do."""
    import dask.array as da

    region = crop_region(tuple(image.shape), factors)
    labels = crop_labels(da.asarray(image)[region], model, factors, device, cancel)
    _release_memory()
    voxel = np.ones(3) if voxel_size is None else np.asarray([float(v) for v in voxel_size])
    working = voxel / np.asarray(factors, dtype=float)  # a voxel of the grid the labels are on
    measured, count = median_diameter_px(labels, tuple(working))
    if count < MIN_OBJECTS or measured <= 0:
        return None
    # measured is in the working grid's finest in-plane voxels: back to the image's pixels
    measured *= float(working[1:].min() / voxel[1:].min())
    return float(np.clip(measured, diameter / MAX_CHANGE, diameter * MAX_CHANGE))


def _release_memory() -> None:
    """Hand the crop pass's freed memory back to the system: glibc keeps freed pages for reuse
    (~330 MB after a 2^20-voxel crop here, ~70 MB after the trim), and the run's own peak,
    which follows, would stack on them."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library (musl): nothing to trim
            pass


def refiner(image, model, options, cancel=None):
    """The ``refine`` callback of :func:`~napari_shiftseg.imaging.rescale.plan_resampling` for
    a run of ``model`` on ``image`` with ``options``: None unless the model is 3D and the image a
    single-channel 3D stack (2D models keep the image's estimate: BBBC007 is scored with it)."""
    if model.geometry.ndim != 3 or np.ndim(image) != 3 or model.config.in_channels != 1:
        return None
    voxel_size = options.voxel_size if options.voxel_size is not None and len(options.voxel_size) == 3 else None

    def refine(diameter: float, factors) -> float | None:
        return refine_diameter(image, model, diameter, factors, voxel_size, options.device, cancel)

    return refine
