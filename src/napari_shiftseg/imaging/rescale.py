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

import dataclasses
import math
from numbers import Real

import dask.array as da
import numpy as np

from ..util._errors import ShiftSegError
from .metrics import median_diameter

__all__ = ["TOLERANCE", "LIMITS", "Resampling", "plan_resampling", "check_growth", "anisotropic",
           "model_diameter", "estimate_diameter", "check_diameter",
           "scale_for", "working_shape", "resize_image", "resize_labels", "labels_on_image_grid",
           "working_region", "axis_factors",
           "isotropic_factors"]

#: Sizes within this ratio of the model's diameter are segmented as they are (resampling costs
#: time and blurs a little, and the dev scores were flat within +-20 %).
TOLERANCE = 1.2

#: Smallest and largest object resampling factor. Real nuclei are 6-120 px across and the
#: bundled models learnt 14 px (3D) and 20 px (2D): 120 px nuclei need x0.12, 6 px ones x2.3-3.3
#: (issue 24; the old (0.5, 2) left 75 px nuclei at 37 px, where the 3D model cut each in 40).
LIMITS = (0.1, 3.0)

#: Resampling may make the network's image at most this many times the input's voxels (and
#: never more than :data:`MAX_WORKING_VOXELS`): a wrong voxel size (1000 x 0.001) or diameter
#: must give a clear error, not a run that fills the memory.
MAX_GROWTH = 64
MAX_WORKING_VOXELS = 2**33

#: Voxel sizes whose axes differ by less than this ratio count as isotropic (no resampling).
ISOTROPIC_TOLERANCE = 1.1

#: Fewer first-pass objects than this give no usable size estimate: no resampling.
MIN_OBJECTS = 3

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


@dataclasses.dataclass(frozen=True)
class Resampling:
    """How a run resamples its image: per-axis ``factors`` (1 = as imaged), the object
    ``factor`` part of them, the image's object ``diameter`` (px of the finest in-plane axis,
    None when not measured), the model's ``target``, whether voxels were made ``isotropic``
    and a sentence that says what was decided (CLI, widget status, output attributes)."""

    factors: tuple[float, ...]
    factor: float = 1.0
    diameter: float | None = None
    target: float | None = None
    isotropic: bool = False
    note: str = ""

    @property
    def identity(self) -> bool:
        return all(f == 1.0 for f in self.factors)


def anisotropic(voxel_size, ndim: int) -> bool:
    """Whether ``voxel_size`` (its last ``ndim`` values) differs between axes beyond the tolerance."""
    if voxel_size is None:
        return False
    values = [float(v) for v in tuple(voxel_size)[-ndim:]]
    return max(values) / min(values) > ISOTROPIC_TOLERANCE


def plan_resampling(image, model, diameter="auto", *, voxel_size=None, isotropic="auto",
                    lead: int = 0, estimate=None, refine=None) -> Resampling:
    """The one rule for how a run resamples ``image`` for ``model`` (segment_to_zarr, the
    widgets and evaluate ask it).

    * **Voxel size.** A 3D model on a stack whose ``voxel_size`` is anisotropic gets cubic
      voxels (``isotropic="auto"``, the default, unless the network itself pools the axes
      differently; True insists and needs a voxel size, False leaves the voxels as they
      are). A stack's slice axis (``lead``) is never resampled.
    * **Object size.** ``diameter`` in pixels of the finest in-plane axis, or ``"auto"``:
      measured from the image itself (:func:`napari_shiftseg.imaging.sizing.estimate_size`, with the
      voxel size), never from a first segmentation pass alone; ``estimate`` may pass one made
      already. ``refine(diameter, factors)``, when given, checks a measured diameter with the
      model itself (:mod:`napari_shiftseg.inference.size_check`: a pass on a central crop at
      that scale, bounded around the image's estimate) and returns the diameter to use, or None
      to keep it. The image is resampled by ``model diameter / image diameter`` (:data:`LIMITS`),
      down as well as up.
    """
    from . import sizing

    if isotropic not in (True, False, "auto"):
        raise ShiftSegError(f"isotropic must be True, False or 'auto', got {isotropic!r}")
    ndim = model.geometry.ndim
    diameter = check_diameter(diameter)
    iso = None
    # An anisotropic network (per-axis pooling) was made for the stack's own voxels: "auto"
    # leaves those alone.
    auto = isotropic == "auto" and model.geometry.isotropic and anisotropic(voxel_size, ndim)
    if not lead and ndim == 3 and voxel_size is not None and (isotropic is True or auto):
        iso = isotropic_factors(voxel_size, ndim)
    notes = []
    if iso is not None and any(f != 1.0 for f in iso):
        notes.append("voxels made cubic (" + " x ".join(f"{f:g}" for f in iso) + " per axis)")
    target = model_diameter(model)
    found = None
    if diameter == "auto" and target is not None:
        if estimate is None:
            view = image[image.shape[0] // 2] if lead else image
            estimate = sizing.estimate_size(view, voxel_size if iso is not None else None)
        if estimate is None:
            notes.append("no nuclei stood out to measure their size: segmented at the image's scale")
        else:
            found = estimate.diameter
            notes.append(estimate.describe())
            if refine is not None and not lead:
                checked = refine(found, axis_factors(scale_for(found, target), ndim, lead, iso))
                if checked is not None:
                    notes[-1] += f", {checked:.0f} px as the model sees a central crop"
                    found = checked
    elif isinstance(diameter, float):
        found = diameter
        notes.append(f"nuclei {diameter:g} px across (given)")
    factor = scale_for(found, target) if found else 1.0
    if found and target:
        notes[-1] += (f"; resampled x{factor:.2f} to the model's {target:g} px" if factor != 1.0
                      else f"; segmented as imaged (the model's {target:g} px is close)")
    factors = axis_factors(factor, ndim, lead, iso)
    return Resampling(factors, factor, found, target, iso is not None, "; ".join(notes))


def check_growth(shape, factors) -> tuple[int, ...]:
    """The resampled shape, refused with a clear message beyond :data:`MAX_GROWTH`."""
    out = working_shape(shape, factors)
    before, after = math.prod(int(n) for n in shape), math.prod(out)
    if after > MAX_WORKING_VOXELS or after > MAX_GROWTH * max(before, 1):
        raise ShiftSegError(
            f"resampling would turn the image of {tuple(shape)} voxels into {out} ({after / max(before, 1):.0f}x "
            f"the voxels): check the voxel size and the object diameter (give --diameter or "
            f"--voxel-size), or segment as imaged with --diameter none")
    return out
