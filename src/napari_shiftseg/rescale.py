"""Object size: run the network at the scale its objects were learnt at (cellpose's "diameter").

A spatial-embedding model separates touching objects by their centres, with one mean-shift
bandwidth in embedding units, i.e. in pixels. It therefore works best on objects of the size it
was tuned on: on the dev set (docs/MODELS.md) the bundled 2D model scored 0.46 on an image of
~10 px nuclei and 0.70 on the same image upscaled 2x, and 0.60 vs 0.71 on ~35 px nuclei
downscaled 0.6x. So a model records the object diameter it segments best
(``meta["object_diameter"]``); an image whose objects differ from it by more than
:data:`TOLERANCE` is resampled by ``model diameter / image diameter`` (within :data:`LIMITS`),
segmented, and its labels are resampled back to the image's own grid.

The image's diameter is either given (the user knows their nuclei) or estimated from a first
pass at scale 1: the median equivalent diameter of the instances found. When that asks for
resampling, it is measured once more on the pass at that scale (cellpose refines its size
model's guess the same way): at scale 1 a model tuned on 20 px nuclei cuts 35-41 px nuclei
into pieces and measured them as 28 px, and over-measured crowded 9 px nuclei as 11-12 px; the
second pass measured 32-40 px and 9.6-10 px, and dev2d AP@0.5 rose from 0.857 to 0.876
(benchmarks/RESULTS.md section 7). The 3D dev volumes were estimated within 10 % at once.

Resampling is separable and lazy: each axis is one or two ``take`` gathers (linear
interpolation for images, nearest for labels), so on a dask array it stays blockwise and its
memory scales with the chunk, not the volume. Exact tiling is unaffected: tiles sit on the
global f^l grid of the resampled image, so the tiled result still equals the whole-image result
on that image.
"""

from __future__ import annotations

import math
from numbers import Real

import dask.array as da
import numpy as np

from ._errors import ShiftSegError
from .metrics import median_diameter

__all__ = ["TOLERANCE", "LIMITS", "model_diameter", "estimate_diameter", "check_diameter",
           "scale_for", "working_shape", "resize_image", "resize_labels", "labels_on_image_grid",
           "working_region", "object_factor", "REFINE_TOLERANCE", "axis_factors",
           "isotropic_factors"]

#: Sizes within this ratio of the model's diameter are segmented as they are (resampling costs
#: time and blurs a little, and the dev scores were flat within +-20 %).
TOLERANCE = 1.2

#: Smallest and largest resampling factor: beyond 2x up the image grows 4x (8x in 3D) for little
#: gain, below 0.5x down small neighbours disappear.
LIMITS = (0.5, 2.0)

#: Fewer first-pass objects than this give no usable size estimate: no resampling.
MIN_OBJECTS = 3

#: A refined estimate whose factor is within this ratio of the first one keeps the first
#: factor, so the pass that measured it is the answer (no third pass).
REFINE_TOLERANCE = 1.1


def model_diameter(model) -> float | None:
    """The object diameter (pixels) the model (or its meta dict) segments best, or None."""
    meta = (model if isinstance(model, dict) else getattr(model, "meta", None)) or {}
    value = meta.get("object_diameter") if isinstance(meta, dict) else None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def estimate_diameter(labels) -> float | None:
    """Median equivalent diameter (pixels) of the objects in ``labels``; None for < 3 objects."""
    labels = np.asarray(labels)
    if len(np.unique(labels[labels > 0])) < MIN_OBJECTS:
        return None
    return median_diameter([labels])


#: Central crop (pixels per axis, 2D / 3D) segmented to estimate the object size of a large
#: image before it is segmented tile by tile (:func:`napari_shiftseg.evaluate.estimate_as_run`).
ESTIMATE_CROP = {2: (256, 256), 3: (48, 128, 128)}


def isotropic_factors(voxel_size, ndim: int) -> tuple[float, ...]:
    """Per-axis factors that make voxels cubic at the finest in-plane spacing (coarse axes,
    usually z, gain planes; nothing is downsampled)."""
    voxel = tuple(float(v) for v in voxel_size)[-ndim:]
    finest = min(voxel[-2:])
    return tuple(v / finest for v in voxel)


def check_diameter(diameter) -> float | str | None:
    """``None``, ``"auto"`` or a positive number of pixels; anything else is refused."""
    if diameter is None or (isinstance(diameter, str) and diameter == "auto"):
        return diameter
    if isinstance(diameter, bool) or not isinstance(diameter, Real) or not math.isfinite(diameter) \
            or diameter <= 0:
        raise ShiftSegError(f"the object diameter must be 'auto' or a positive number of pixels, "
                            f"got {diameter!r}")
    return float(diameter)


def object_factor(model, diameter, estimate, refine=None) -> tuple[float, float | None, float | None]:
    """How much to resample for ``model``: ``(factor, image diameter, model diameter)``.

    ``diameter`` is checked (:func:`check_diameter`); for ``'auto'`` the image's diameter is
    ``estimate()`` (called only then) and, when that asks for a factor other than 1,
    ``refine(factor)``: the diameter (image pixels) measured on a pass at that factor (module
    docstring). A refined factor within :data:`REFINE_TOLERANCE` of the first keeps the first.
    A model that records no diameter, or ``None``, gives 1. Every path that segments
    (``segment_array``, ``segment_to_zarr``, the Segment widget) asks this one function and
    only differs in how it measures.
    """
    diameter = check_diameter(diameter)
    target = model_diameter(model)
    if diameter is None or target is None:
        return 1.0, None, target
    if diameter != "auto":
        return scale_for(diameter, target), diameter, target
    diameter = estimate()
    factor = scale_for(diameter, target)
    if refine is not None and factor != 1.0:
        second = refine(factor)
        if second:
            diameter, again = second, scale_for(second, target)
            if abs(math.log(again / factor)) >= math.log(REFINE_TOLERANCE):
                factor = again
    return factor, diameter, target


def axis_factors(factor: float, ndim: int, lead: int = 0, iso=None) -> tuple[float, ...]:
    """Per-axis factors of an image with ``lead`` axes before the model's ``ndim`` (a stack's
    slice axis: never resampled): the isotropic factors ``iso`` times the object ``factor``."""
    iso = tuple(iso) if iso is not None else (1.0,) * ndim
    return (1.0,) * lead + tuple(i * factor for i in iso)


def scale_for(image_diameter: float | None, target: float | None) -> float:
    """Resampling factor that brings objects of ``image_diameter`` to ``target`` (1.0 = none)."""
    if not image_diameter or not target:
        return 1.0
    factor = float(np.clip(target / image_diameter, *LIMITS))
    return 1.0 if abs(math.log(factor)) < math.log(TOLERANCE) else factor


def working_shape(shape, factor) -> tuple[int, ...]:
    """Shape of ``shape`` resampled by ``factor`` (a number or one per axis)."""
    factors = _factors(factor, len(shape))
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, factors))


def _factors(factor, ndim: int) -> tuple[float, ...]:
    factors = (factor,) * ndim if isinstance(factor, Real) else tuple(factor)
    if len(factors) != ndim or any(isinstance(f, bool) or not isinstance(f, Real) or not math.isfinite(f)
                                   or f <= 0 for f in factors):
        raise ShiftSegError(f"a resampling factor must be positive, one per axis ({ndim}), got {factor!r}")
    return tuple(float(f) for f in factors)


def _source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of each output pixel centre (pixel centres aligned, as scipy grid_mode)."""
    return np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)


def _take(array, index, axis):
    return da.take(array, index, axis=axis) if isinstance(array, da.Array) else np.take(array, index, axis=axis)


def _weights(w, axis, ndim):
    shape = [1] * ndim
    shape[axis] = w.size
    return w.reshape(shape).astype(np.float32)


def _antialias(array, factors):
    """Gaussian pre-filter on the axes that shrink, so that downsampling does not alias."""
    from scipy import ndimage as ndi

    sigma = tuple(max(0.0, (1 / f - 1) / 2) for f in factors)
    if not any(sigma):
        return array
    if isinstance(array, da.Array):
        depth = {a: int(math.ceil(4 * s)) for a, s in enumerate(sigma)}
        return array.map_overlap(ndi.gaussian_filter, depth=depth, boundary="reflect", sigma=sigma,
                                 mode="reflect", dtype=np.float32)
    return ndi.gaussian_filter(array, sigma, mode="reflect")


def resize_image(image, factor=None, shape=None):
    """``image`` (numpy or dask, spatial axes only) resampled, linearly, by ``factor`` or to ``shape``.

    Float32 out. Lazy on dask input: one or two gathers per axis, blockwise.
    """
    ndim = image.ndim
    shape = working_shape(image.shape, factor) if shape is None else tuple(int(n) for n in shape)
    if len(shape) != ndim:
        raise ShiftSegError(f"cannot resample a {ndim}D image to shape {shape}")
    if shape == tuple(image.shape):
        return image
    out = image.astype(np.float32)
    out = _antialias(out, [m / n for m, n in zip(shape, image.shape)])
    for axis, (n_in, n_out) in enumerate(zip(image.shape, shape)):
        if n_in == n_out:
            continue
        x = _source_coordinates(n_in, n_out)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        w = _weights(x - lo, axis, ndim)
        out = _take(out, lo, axis) * (1 - w) + _take(out, hi, axis) * w
    return out


def nearest_index(n_in: int, n_out: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Index on an ``n_in`` grid of the pixels ``start..stop`` of the same axis on an ``n_out``
    grid (nearest pixel centre)."""
    stop = n_out if stop is None else stop
    return np.clip(np.floor((np.arange(start, stop) + 0.5) * (n_in / n_out)), 0, n_in - 1).astype(np.int64)


def resize_labels(labels, shape):
    """Integer ``labels`` (numpy or dask) resampled by nearest neighbour to ``shape``."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != labels.ndim:
        raise ShiftSegError(f"cannot resample {labels.ndim}D labels to shape {shape}")
    out = labels
    for axis, (n_in, n_out) in enumerate(zip(labels.shape, shape)):
        if n_in != n_out:
            out = _take(out, nearest_index(n_in, n_out), axis)
    return out


def labels_on_image_grid(labels, working_origin, working_shape, image_region, image_shape):
    """Labels computed on the part of a resampled image that starts at ``working_origin`` (of
    a whole resampled image of ``working_shape``), read back on the pixels ``image_region``
    (slices) of the image of ``image_shape``. The working part must cover the region."""
    out = labels
    for axis, (o, n_w, r, n_o) in enumerate(zip(working_origin, working_shape, image_region, image_shape)):
        index = nearest_index(n_w, n_o, r.start, r.stop) - o
        if index.min() < 0 or index.max() >= labels.shape[axis]:
            raise ShiftSegError("internal: the resampled region does not cover the image region")
        out = _take(out, index, axis)
    return out


def working_region(region, image_shape, working_shape) -> tuple[slice, ...]:
    """The slices of the resampled image that cover the image pixels ``region``."""
    out = []
    for r, n_o, n_w in zip(region, image_shape, working_shape):
        index = nearest_index(n_w, n_o, r.start, r.stop)
        out.append(slice(int(index.min()), int(index.max()) + 1))
    return tuple(out)
