"""Synthetic disks (2D) and spheres (3D) with instance labels.

Every generator returns ``(image, labels)``: ``image`` is float32 (objects bright on a 0
background), ``labels`` is int32 (0 = background, objects numbered 1..N in raster order of
their centres). Everything is deterministic given ``seed``.

* :func:`lattice` - identical objects on a square / cubic lattice (the paper's Fig. 2 data:
  radius 5, spacing 16 or 15, image 220 x 220).
* :func:`random_objects` - randomly placed, non-overlapping objects with jittered radius and
  intensity.
* :func:`lazy_random_objects` - the same as a lazy dask volume of any size, generated chunk by
  chunk, for testing tiled prediction on data that does not fit in memory.
* :func:`nuclei` - realistic fluorescent nuclei (touching/overlapping clusters, irregular
  shapes, texture, dim and bright, blur, background gradient, Poisson noise) with exact labels.
  Seeds in :data:`TEST_SEEDS` are held out for benchmarks: never train on them.

Optional corruptions, applied in this order: elastic deformation (same displacement field for
image and labels), then additive Gaussian noise (image only). Each corruption draws from its own
random stream, so switching noise on does not move the objects.

An object of radius ``r`` centred on the integer pixel ``c`` is the set of pixels ``x`` with
``|x - c| <= r`` (Euclidean), so a radius-5 disk has 81 pixels (pi * 25 = 78.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import dask.array as da
import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.util._options import with_overrides
from napari_shiftseg.util.region import Region
from napari_shiftseg.util.validate import is_whole

__all__ = ["lattice", "random_objects", "lazy_random_objects", "nuclei", "NucleiScene", "Distortion", "TEST_SEEDS"]

# Candidate centres tried per object before random placement gives up on it.
_TRIES_PER_OBJECT = 200


# --------------------------------------------------------------------------- validation


def _check_shape(shape, name: str = "shape") -> tuple[int, ...]:
    try:
        sizes = tuple(shape)
    except TypeError:
        raise ShiftSegError(
            f"{name} {shape!r} must be a tuple of 2 (y, x) or 3 (z, y, x) positive integers"
        ) from None
    if len(sizes) not in (2, 3) or not all(is_whole(s) and s >= 1 for s in sizes):
        raise ShiftSegError(
            f"{name} {shape!r} must be a tuple of 2 (y, x) or 3 (z, y, x) positive integers"
        )
    return tuple(int(s) for s in sizes)


def _per_axis_int(value, ndim: int, name: str, minimum: int | None) -> tuple[int, ...]:
    """An int or one int per axis (each >= ``minimum`` unless None), as a tuple of length ndim."""
    values = (value,) * ndim if is_whole(value) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    low = -math.inf if minimum is None else minimum
    if len(values) != ndim or not all(is_whole(v) and v >= low for v in values):
        bound = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ShiftSegError(
            f"{name} {value!r} must be {bound} or {ndim} such integers (one per axis)"
        )
    return tuple(int(v) for v in values)


def _real(value, name: str, *, minimum: float = 0.0, strict: bool = True) -> float:
    """A finite real number > ``minimum`` (``strict``) or >= ``minimum``."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        relation = ">" if strict else ">="
        raise ShiftSegError(f"{name} {value!r} must be a finite number {relation} {minimum:g}")
    return float(value)


def _check_seed(seed) -> int:
    if not is_whole(seed) or seed < 0:
        raise ShiftSegError(f"seed {seed!r} must be a non-negative integer")
    return int(seed)


def _check_intensity_range(intensity_range) -> tuple[float, float]:
    try:
        low, high = intensity_range
    except (TypeError, ValueError):
        raise ShiftSegError(
            f"intensity_range {intensity_range!r} must be a pair (low, high) of finite numbers"
        ) from None
    low = _real(low, "intensity_range low", minimum=-math.inf)
    high = _real(high, "intensity_range high", minimum=-math.inf)
    if low > high:
        raise ShiftSegError(f"intensity_range {intensity_range!r} must have low <= high")
    return low, high


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class _ObjectSpec:
    """How random objects look; validated once, then shipped to dask workers (picklable)."""

    ndim: int
    radius: float
    radius_jitter: float
    intensity_range: tuple[float, float]
    min_gap: float

    @classmethod
    def build(cls, ndim, radius, radius_jitter, intensity_range, min_gap) -> _ObjectSpec:
        radius = _real(radius, "radius")
        radius_jitter = _real(radius_jitter, "radius_jitter", strict=False)
        if radius_jitter >= radius:
            raise ShiftSegError(
                f"radius_jitter {radius_jitter:g} must be smaller than radius {radius:g} "
                "so that every object keeps a positive radius"
            )
        return cls(
            ndim=ndim,
            radius=radius,
            radius_jitter=radius_jitter,
            intensity_range=_check_intensity_range(intensity_range),
            min_gap=_real(min_gap, "min_gap", strict=False),
        )

    @property
    def max_radius(self) -> float:
        return self.radius + self.radius_jitter

    def count_for(self, shape: tuple[int, ...], density: float) -> int:
        """Number of objects of nominal radius covering ``density`` of ``shape``."""
        if self.ndim == 2:
            object_size = math.pi * self.radius**2
        else:
            object_size = 4.0 / 3.0 * math.pi * self.radius**3
        return round(density * math.prod(shape) / object_size)


def _object_extent(radius: float) -> int:
    # Integer centres: the object reaches floor(r) pixels from its centre along each axis.
    return math.floor(radius)


def _rngs(entropy) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for placement, elastic field and noise (one change leaves the rest)."""
    children = np.random.SeedSequence(entropy).spawn(3)
    placement, field, noise = (np.random.default_rng(child) for child in children)
    return placement, field, noise


def _check_density(density) -> float:
    density = _real(density, "density")
    # Random non-overlapping disks jam at about 0.55 area fraction (spheres: 0.38), before gaps.
    if density > 0.5:
        raise ShiftSegError(
            f"density {density:g} must be in (0, 0.5] (fraction of the image covered)"
        )
    return density


def _paint_labels(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Label image with object ``i`` (centre ``centres[i]``, radius ``radii[i]``) as ``i + 1``."""
    labels = np.zeros(shape, dtype=np.int32)
    for index, (centre, radius) in enumerate(zip(centres, radii)):
        reach = _object_extent(radius)
        box = tuple(
            slice(max(c - reach, 0), min(c + reach + 1, size)) for c, size in zip(centre, shape)
        )
        grids = np.ogrid[box]
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        # A view: writing into it writes into labels.
        labels[box][dist2 <= radius * radius] = index + 1
    return labels


def _image_from_labels(labels: np.ndarray, intensities) -> np.ndarray:
    """Image whose object ``i`` has intensity ``intensities[i - 1]`` and background 0."""
    lookup = np.concatenate([[0.0], np.asarray(intensities, dtype=np.float64)]).astype(np.float32)
    return lookup[labels]


def _elastic(image, labels, alpha: float, sigma: float, rng: np.random.Generator):
    """Warp image (linear) and labels (nearest) with one smooth random displacement field.

    Each axis' displacement is white noise smoothed by a Gaussian of width ``sigma`` and scaled so
    that its root-mean-square is ``alpha`` pixels (so ``alpha`` means the same for every sigma).
    """
    coords = np.indices(labels.shape, dtype=np.float64)
    for axis in range(labels.ndim):
        field = ndimage.gaussian_filter(rng.standard_normal(labels.shape), sigma, mode="reflect")
        rms = math.sqrt(float(np.mean(field * field)))
        if rms > 0:
            coords[axis] += field * (alpha / rms)
    image = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    # Objects pushed out of the image leave gaps in the ids; keep them 1..N.
    labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)
    return image.astype(np.float32, copy=False), labels


def _add_noise(image: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(noise_std)
    return image + noise


def _corrupt(image, labels, *, elastic_alpha, elastic_sigma, noise_std, rngs):
    """Apply the optional elastic deformation, then the optional noise."""
    _, elastic_rng, noise_rng = rngs
    if elastic_alpha > 0:
        image, labels = _elastic(image, labels, elastic_alpha, elastic_sigma, elastic_rng)
    if noise_std > 0:
        image = _add_noise(image, noise_std, noise_rng)
    return image, labels


def _check_corruptions(noise_std, elastic_alpha, elastic_sigma) -> tuple[float, float, float]:
    return (
        _real(noise_std, "noise_std", strict=False),
        _real(elastic_alpha, "elastic_alpha", strict=False),
        _real(elastic_sigma, "elastic_sigma"),
    )


# --------------------------------------------------------------------------- lattice


def _lattice_labels(shape, spacing, offset, radius, partial) -> np.ndarray:
    """Vectorised lattice painting: every pixel only needs its nearest lattice centre.

    Because spacing > 2 * radius, a pixel inside some object is within spacing / 2 of that
    object's centre along every axis, so the per-axis nearest centre is the right one.
    """
    reach = _object_extent(radius)
    dist2 = np.zeros((1,) * len(shape))
    cell = np.zeros((1,) * len(shape), dtype=np.int64)
    keep = np.ones((1,) * len(shape), dtype=bool)
    for axis, (size, step, start) in enumerate(zip(shape, spacing, offset)):
        x = np.arange(size)
        k = np.round((x - start) / step).astype(np.int64)
        centre = start + k * step
        # k spans every lattice cell the image touches, partial border cells included.
        k_lo, k_hi = k.min(), k.max()
        broadcast = [1] * len(shape)
        broadcast[axis] = size
        dist2 = dist2 + ((x - centre) ** 2).reshape(broadcast)
        cell = cell * (k_hi - k_lo + 1) + (k - k_lo).reshape(broadcast)
        if not partial:
            whole = (centre - reach >= 0) & (centre + reach <= size - 1)
            keep = keep & whole.reshape(broadcast)
    inside = (dist2 <= radius * radius) & keep
    provisional = np.where(inside, cell + 1, 0)
    # Disks that only touch the image outside their bounding-box corner get no pixels: renumber.
    return relabel_sequential(provisional)[0].astype(np.int32, copy=False)


@dataclass(frozen=True)
class Distortion:
    """What :func:`lattice` and :func:`random_objects` do to a clean picture.

    noise_std : standard deviation of additive Gaussian noise (the paper's variance 0.01 is 0.1).
    elastic_alpha : root-mean-square displacement (pixels) of an elastic deformation; 0 = none.
    elastic_sigma : smoothness (Gaussian sigma, pixels) of the displacement field.
    """

    noise_std: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 8.0

    def checked(self) -> dict[str, float]:
        """The three values, checked, as keywords of ``_corrupt``."""
        noise, alpha, sigma = _check_corruptions(self.noise_std, self.elastic_alpha, self.elastic_sigma)
        return {"noise_std": noise, "elastic_alpha": alpha, "elastic_sigma": sigma}


def lattice(
    shape,
    spacing,
    radius: float = 5,
    intensity: float = 1.0,
    offset=None,
    seed: int = 0,
    partial: bool = True,
    distortion: Distortion | None = None,
    **overrides,
):
    """Identical disks / spheres centred on a square / cubic lattice.

    The image is a window onto an infinite lattice with centres at ``offset + k * spacing``
    (``k`` integer, per axis). With ``partial=True`` (default) every object that intersects the
    window is drawn, clipped at the image border, so the picture is exactly periodic: shifting
    ``offset`` by ``spacing`` gives the same image. With ``partial=False`` only objects lying
    entirely inside the image are drawn.

    Parameters
    ----------
    shape : tuple of int
        Image shape, (y, x) or (z, y, x).
    spacing : int or tuple of int
        Distance between neighbouring centres, per axis. Must exceed ``2 * radius`` so objects
        never overlap.
    radius : float
        Object radius in pixels (> 0).
    intensity : float
        Object intensity; background is 0.
    offset : int or tuple of int, optional
        Position of one lattice centre, per axis. Default ``spacing // 2``.
    seed : int
        Seed for the noise and the deformation.
    partial : bool
        Include objects clipped by the image border.
    distortion : Distortion, optional
        Noise and elastic deformation (none by default); its fields may be given by name,
        ``noise_std=0.1``.

    Returns
    -------
    image : numpy.ndarray of float32
    labels : numpy.ndarray of int32
        0 = background, objects 1..N in raster order of their centres.

    Raises
    ------
    ShiftSegError
        On a bad shape, spacing, offset, radius or corruption setting.

    Examples
    --------
    >>> image, labels = lattice((220, 220), spacing=16)  # the paper's Fig. 2a
    >>> int(labels.max())
    196
    """
    shape = _check_shape(shape)
    ndim = len(shape)
    spacing = _per_axis_int(spacing, ndim, "spacing", 1)
    radius = _real(radius, "radius")
    if min(spacing) <= 2 * radius:
        raise ShiftSegError(
            f"spacing {spacing} must exceed 2 * radius = {2 * radius:g} "
            "so that objects do not overlap"
        )
    if offset is None:
        offset = tuple(step // 2 for step in spacing)
    else:
        offset = _per_axis_int(offset, ndim, "offset", None)
    intensity = _real(intensity, "intensity", minimum=-math.inf)
    corruptions = with_overrides(distortion or Distortion(), "synth", overrides).checked()
    rngs = _rngs(_check_seed(seed))

    labels = _lattice_labels(shape, spacing, offset, radius, bool(partial))
    image = np.where(labels > 0, np.float32(intensity), np.float32(0))
    return _corrupt(
        image,
        labels,
        **corruptions,
        rngs=rngs,
    )


# --------------------------------------------------------------------------- random objects


class _Packer:
    """Non-overlap bookkeeping for rejection sampling.

    Two objects may coexist if their centres are more than ``r1 + r2 + min_gap`` apart. A
    spatial hash with cells of ``2 * max_radius + min_gap`` keeps each test to the 3^d cells
    around the candidate instead of all objects placed so far.
    """

    def __init__(self, spec: _ObjectSpec):
        self.min_gap = spec.min_gap
        self.cell_size = 2 * spec.max_radius + spec.min_gap
        steps = np.meshgrid(*([(-1, 0, 1)] * spec.ndim), indexing="ij")
        self.neighbourhood = np.stack(steps, -1).reshape(-1, spec.ndim)
        self.buckets: dict[tuple[int, ...], list[int]] = {}
        self.centres: list[np.ndarray] = []
        self.radii: list[float] = []

    def try_add(self, centre: np.ndarray, radius: float) -> bool:
        cell = (centre // self.cell_size).astype(np.int64)
        for near in map(tuple, cell + self.neighbourhood):
            for other in self.buckets.get(near, ()):
                limit = radius + self.radii[other] + self.min_gap
                if np.sum((centre - self.centres[other]) ** 2) <= limit * limit:
                    return False
        self.buckets.setdefault(tuple(cell), []).append(len(self.centres))
        self.centres.append(centre)
        self.radii.append(radius)
        return True


def _place_objects(rng, shape, n, spec: _ObjectSpec, border: int):
    """Rejection-sample up to ``n`` non-overlapping objects fully inside ``shape``.

    Each object keeps ``border`` extra background pixels to the array edge. Best effort: an
    object that finds no free spot among ``_TRIES_PER_OBJECT`` candidates is dropped.

    Returns
    -------
    centres : (k, ndim) int64 array, sorted in raster order
    radii, intensities : (k,) float64 arrays
    """
    jitter = spec.radius_jitter
    radii = rng.uniform(spec.radius - jitter, spec.radius + jitter, size=n)
    intensities = rng.uniform(*spec.intensity_range, size=n)
    # Large objects first: they are the hardest to fit once the space fills up.
    order = np.argsort(-radii, kind="stable")
    radii, intensities = radii[order], intensities[order]

    packer = _Packer(spec)
    high = np.asarray(shape)
    kept = []
    for index, radius in enumerate(radii):
        margin = _object_extent(radius) + border
        if np.any(high - margin <= margin):
            continue  # this object cannot fit at all (only happens in small edge chunks)
        candidates = rng.integers(margin, high - margin, size=(_TRIES_PER_OBJECT, spec.ndim))
        if any(packer.try_add(candidate, radius) for candidate in candidates):
            kept.append(index)
    centres = np.asarray(packer.centres, dtype=np.int64).reshape(-1, spec.ndim)
    raster = np.lexsort(centres.T[::-1])
    kept_sorted = np.asarray(kept, dtype=np.int64)[raster]
    return centres[raster], radii[kept_sorted], intensities[kept_sorted]


def random_objects(
    shape,
    n_objects: int | None = None,
    density: float = 0.1,
    radius: float = 5,
    radius_jitter: float = 1.0,
    intensity_range=(0.6, 1.0),
    min_gap: float = 2,
    seed: int = 0,
    distortion: Distortion | None = None,
    **overrides,
):
    """Randomly placed, non-overlapping disks / spheres lying fully inside the image.

    Radii are uniform in ``radius +- radius_jitter``, intensities uniform in
    ``intensity_range``. Centres are integer pixels, rejection-sampled so that any two objects'
    centres are more than ``r1 + r2 + min_gap`` apart: objects never overlap, and with
    ``min_gap >= sqrt(ndim)`` (e.g. the default 2) they never touch, not even diagonally.
    Objects may touch the image border but are never clipped by it.

    Parameters
    ----------
    shape : tuple of int
        Image shape, (y, x) or (z, y, x).
    n_objects : int, optional
        Number of objects. Default: derived from ``density``.
    density : float
        Approximate fraction of the image covered by objects, in (0, 0.5]; used when
        ``n_objects`` is None.
    radius, radius_jitter : float
        Nominal radius (> 0) and its uniform jitter (0 <= jitter < radius).
    intensity_range : (float, float)
        Range of object intensities; background is 0.
    min_gap : float
        Extra distance (pixels, >= 0) required between centres beyond ``r1 + r2``.
    seed, distortion, **overrides
        As in :func:`lattice`; ``seed`` also drives placement.

    Returns
    -------
    image : numpy.ndarray of float32
    labels : numpy.ndarray of int32
        0 = background, objects 1..N in raster order of their centres.

    Raises
    ------
    ShiftSegError
        On bad settings, or if not all ``n_objects`` fit into the image.
    """
    shape = _check_shape(shape)
    spec = _ObjectSpec.build(len(shape), radius, radius_jitter, intensity_range, min_gap)
    if n_objects is None:
        n_objects = spec.count_for(shape, _check_density(density))
    elif not is_whole(n_objects) or n_objects < 0:
        raise ShiftSegError(f"n_objects {n_objects!r} must be a non-negative integer or None")
    corruptions = with_overrides(distortion or Distortion(), "synth", overrides).checked()
    rngs = _rngs(_check_seed(seed))

    centres, radii, intensities = _place_objects(rngs[0], shape, int(n_objects), spec, border=0)
    if len(centres) < n_objects:
        raise ShiftSegError(
            f"only {len(centres)} of {n_objects} objects of radius {spec.radius:g} fit into shape "
            f"{shape} with min_gap {spec.min_gap:g}; ask for fewer objects, a lower density or a "
            "larger image"
        )
    labels = _paint_labels(shape, centres, radii)
    image = _image_from_labels(labels, intensities)
    return _corrupt(
        image,
        labels,
        **corruptions,
        rngs=rngs,
    )


# --------------------------------------------------------------------------- lazy volumes


@dataclass(frozen=True)
class _LazyPlan:
    """Everything a dask worker needs to regenerate one chunk (picklable, immutable)."""

    spec: _ObjectSpec
    density: float
    noise_std: float
    seed: int
    numblocks: tuple[int, ...]
    max_per_chunk: int
    border: int

    def chunk(self, block_info, want_image: bool) -> np.ndarray:
        info = block_info[None]
        shape = tuple(info["chunk-shape"])
        linear = int(np.ravel_multi_index(info["chunk-location"], self.numblocks))
        # Seeded by (seed, chunk index): any chunk can be regenerated alone, identically.
        rngs = _rngs((self.seed, linear))
        n = self.spec.count_for(shape, self.density)
        centres, radii, intensities = _place_objects(rngs[0], shape, n, self.spec, self.border)
        labels = _paint_labels(shape, centres, radii)
        if want_image:
            image = _image_from_labels(labels, intensities)
            return _add_noise(image, self.noise_std, rngs[2]) if self.noise_std > 0 else image
        # Unique ids across the volume: chunk k owns k * max_per_chunk + (1..max_per_chunk).
        offset = np.int32(linear * self.max_per_chunk)
        return np.where(labels > 0, labels + offset, np.int32(0))


def _lazy_image_block(plan: _LazyPlan, block_info=None) -> np.ndarray:
    return plan.chunk(block_info, want_image=True)


def _lazy_labels_block(plan: _LazyPlan, block_info=None) -> np.ndarray:
    return plan.chunk(block_info, want_image=False)


def lazy_random_objects(
    shape,
    chunks,
    radius: float = 5,
    radius_jitter: float = 1.0,
    intensity_range=(0.6, 1.0),
    min_gap: float = 2,
    density: float = 0.1,
    noise_std: float = 0.0,
    seed: int = 0,
):
    """Random objects as lazy dask arrays of any size, generated independently per chunk.

    Building the arrays costs nothing; computing a region generates only the chunks it touches.
    Each chunk's objects come from a random stream seeded by ``(seed, chunk index)``, so a chunk
    is identical whenever (and wherever) it is computed, but the content depends on ``chunks``.
    Objects lie fully inside their chunk with at least ``max(1, ceil(min_gap / 2))`` background
    pixels to the chunk border, so none crosses or touches a chunk border. Placement is best
    effort: at high densities a chunk may hold fewer objects than ``density`` asks for.

    Elastic deformation is not offered: independent per-chunk fields would tear objects apart at
    chunk borders.

    Parameters
    ----------
    shape : tuple of int
        Volume shape, (y, x) or (z, y, x).
    chunks : int or tuple of int
        Chunk size, per axis (the last chunk along an axis may be smaller).
    radius, radius_jitter, intensity_range, min_gap, density, noise_std, seed
        As in :func:`random_objects`.

    Returns
    -------
    image : dask.array.Array of float32
    labels : dask.array.Array of int32
        0 = background. Ids are unique across the volume but not consecutive: chunk number
        ``k`` (C order) uses ids ``k * M + 1 .. k * M + M``, ``M`` the most objects per chunk.

    Raises
    ------
    ShiftSegError
        On bad settings, chunks too small for one object, or too many objects for int32 ids.
    """
    shape = _check_shape(shape)
    ndim = len(shape)
    chunk_shape = tuple(min(c, s) for c, s in zip(_per_axis_int(chunks, ndim, "chunks", 1), shape))
    spec = _ObjectSpec.build(ndim, radius, radius_jitter, intensity_range, min_gap)
    density = _check_density(density)
    border = max(1, math.ceil(spec.min_gap / 2))
    needed = 2 * (_object_extent(spec.max_radius) + border) + 1
    if min(chunk_shape) < needed:
        raise ShiftSegError(
            f"chunks {chunk_shape} are too small for objects of radius up to {spec.max_radius:g}; "
            f"use chunks of at least {needed} pixels per axis"
        )
    dask_chunks = da.core.normalize_chunks(chunk_shape, shape)
    numblocks = tuple(len(c) for c in dask_chunks)
    max_per_chunk = max(spec.count_for(chunk_shape, density), 1)
    if math.prod(numblocks) * max_per_chunk >= 2**31:
        raise ShiftSegError(
            f"shape {shape} with chunks {chunk_shape} needs more than 2**31 label ids; "
            "use larger chunks or a lower density"
        )
    plan = _LazyPlan(
        spec=spec,
        density=density,
        noise_std=_real(noise_std, "noise_std", strict=False),
        seed=_check_seed(seed),
        numblocks=numblocks,
        max_per_chunk=max_per_chunk,
        border=border,
    )
    image = da.map_blocks(
        _lazy_image_block,
        plan,
        chunks=dask_chunks,
        dtype=np.float32,
        meta=np.empty((0,) * ndim, dtype=np.float32),
    )
    labels = da.map_blocks(
        _lazy_labels_block,
        plan,
        chunks=dask_chunks,
        dtype=np.int32,
        meta=np.empty((0,) * ndim, dtype=np.int32),
    )
    return image, labels


# --------------------------------------------------------------------------- realistic nuclei

# Held-out seeds for benchmarks (benchmarks/bench_real.py): never train or tune on them.
TEST_SEEDS = range(900_000, 1_000_000)

_NUCLEI_RADIUS = {2: (4.0, 25.0), 3: (4.0, 12.0)}
_NUCLEI_ELONGATION = {2: 2.0, 3: 1.6}
_NUCLEI_BLUR = {2: (1.5, 1.5), 3: (2.0, 1.2, 1.2)}
# Candidate positions tried per nucleus before it is dropped.
_NUCLEUS_TRIES = 30


def _check_pair(value, name: str, *, minimum: float, maximum: float) -> tuple[float, float]:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ShiftSegError(f"{name} {value!r} must be a pair (low, high) of numbers") from None
    low = _real(low, f"{name} low", minimum=-math.inf)
    high = _real(high, f"{name} high", minimum=-math.inf)
    if not minimum <= low <= high <= maximum:
        raise ShiftSegError(
            f"{name} {value!r} must satisfy {minimum:g} <= low <= high <= {maximum:g}"
        )
    return low, high


def _unit(value, name: str, *, maximum: float = 1.0) -> float:
    value = _real(value, name, strict=False)
    if value > maximum:
        raise ShiftSegError(f"{name} {value:g} must be between 0 and {maximum:g}")
    return value


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    if ndim == 2:
        angle = rng.uniform(0, math.pi)
        c, s = math.cos(angle), math.sin(angle)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _nucleus_field(rng, ndim, radius, elongation, irregularity, centre_frac):
    """Normalised distance ``d`` of a random irregular ellipse/ellipsoid on a local box.

    ``d <= 1`` is inside. Returns ``(d, reach)``, ``d`` of shape ``(2 * reach + 1,) * ndim``
    centred on the nucleus centre (sub-pixel offset ``centre_frac`` in [-0.5, 0.5)).
    """
    aspect = rng.uniform(1.0, elongation)
    if ndim == 2:
        axes = np.array([radius * aspect**0.5, radius * aspect**-0.5])
        orders = np.arange(2, 6)
    else:
        axes = np.array([radius * aspect ** (2 / 3)] + [radius * aspect ** (-1 / 3)] * 2)
        orders = np.arange(1, 5)
    amps = irregularity * rng.uniform(0.3, 1.0, len(orders)) / orders
    phases = rng.uniform(0, 2 * math.pi, len(orders))
    rotation = _random_rotation(rng, ndim)
    directions = rng.standard_normal((len(orders), 3))
    reach = int(math.ceil(axes.max() * (1 + amps.sum()))) + 1
    grid = np.ogrid[(slice(-reach, reach + 1),) * ndim]
    # Local coordinates: rotate the offset from the centre, then scale by the semi-axes.
    local = [
        sum(rotation[axis, k] * (grid[k] - centre_frac[k]) for k in range(ndim)) / axes[axis]
        for axis in range(ndim)
    ]
    rho = np.sqrt(sum(u * u for u in local))
    if ndim == 2:
        angle = np.arctan2(local[1], local[0])
        bump = sum(a * np.cos(k * angle + p) for a, k, p in zip(amps, orders, phases))
    else:
        safe = np.maximum(rho, 1e-6)
        bump = 0.0
        for a, k, p, v in zip(amps, orders, phases, directions):
            v = v / np.linalg.norm(v)
            cosine = sum(v[i] * local[i] for i in range(3)) / safe
            bump = bump + a * np.cos(k * math.pi * cosine + p)
    return (rho / (1.0 + bump)).astype(np.float32), reach


def _clip_box(centre, reach, shape):
    """Slices of the image box and of the local box for a nucleus at integer ``centre``."""
    image_box, local_box = [], []
    for c, size in zip(centre, shape):
        lo, hi = c - reach, c + reach + 1
        image_box.append(slice(max(lo, 0), min(hi, size)))
        local_box.append(slice(max(lo, 0) - lo, 2 * reach + 1 - (hi - min(hi, size))))
    return tuple(image_box), tuple(local_box)


def _keep_connected(labels: np.ndarray) -> np.ndarray:
    """Give every fragment but the largest of each label to the label it touches most (or 0)."""
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = Region.from_slices(box).grow(1, within=Region.whole(labels.shape)).to_slices()
        view = labels[grown]
        parts, n = ndimage.label(view == index)
        if n <= 1:
            continue
        sizes_ = np.bincount(parts.ravel())[1:]
        for part in np.flatnonzero(np.arange(1, n + 1) != np.argmax(sizes_) + 1) + 1:
            piece = parts == part
            ring = ndimage.binary_dilation(piece) & ~piece
            neighbours = view[ring]
            neighbours = neighbours[(neighbours != 0) & (neighbours != index)]
            view[piece] = np.bincount(neighbours).argmax() if neighbours.size else 0
    return labels


@dataclass(frozen=True)
class NucleiScene:
    """What :func:`nuclei` draws: sizes, shapes, crowding, appearance, optics and camera.

    radius : (float, float), optional
        Range of equivalent radii in pixels (default (4, 25) in 2D, (4, 12) in 3D).
    density : float
        Target fraction of the image covered by nuclei, in (0, 0.8] (best effort).
    size_spread : float
        Standard deviation of log radius within one image (>= 0).
    elongation : float, optional
        Largest aspect ratio (>= 1; default 2 in 2D, 1.6 in 3D).
    irregularity : float
        Strength of the shape perturbation, in [0, 0.5].
    cluster : float
        Fraction of nuclei placed touching or overlapping an existing one, in [0, 1].
    max_overlap : float
        Largest overlapping fraction of a nucleus' area, in [0, 0.5].
    brightness_range : (float, float)
        Range of nucleus brightness, 0 < low <= high.
    texture : float
        Relative strength of the chromatin texture, in [0, 1].
    blur : float or tuple of float, optional
        Gaussian PSF sigma in pixels, one value or one per axis (default 1.5 in 2D,
        (2, 1.2, 1.2) in 3D); 0 switches blur off.
    background : float
        Mean background level relative to the brightest nucleus (>= 0), with a smooth gradient.
    photons : float
        Expected photon count of a brightness-1 pixel (> 0); lower is noisier.
    read_noise : float
        Standard deviation of the Gaussian read noise in counts (>= 0).
    """

    radius: tuple[float, float] | None = None
    density: float = 0.35
    size_spread: float = 0.25
    elongation: float | None = None
    irregularity: float = 0.15
    cluster: float = 0.6
    max_overlap: float = 0.1
    brightness_range: tuple[float, float] = (0.1, 1.0)
    texture: float = 0.3
    blur: float | tuple[float, ...] | None = None
    background: float = 0.12
    photons: float = 200.0
    read_noise: float = 2.0


def nuclei(shape, seed: int = 0, scene: NucleiScene | None = None, **overrides):
    """Realistic fluorescent nuclei (2D or 3D) with exact instance labels.

    Made to be hard where classical threshold + watershed pipelines fail:

    * touching and slightly overlapping clusters (``cluster`` of the nuclei are placed against
      an existing one; overlaps are at most ``max_overlap`` of either nucleus);
    * elongated, irregular shapes: ellipses / ellipsoids with random orientation, aspect ratio
      up to ``elongation`` and low-order radial Fourier (2D) or smooth directional (3D)
      perturbations of relative size ``irregularity``;
    * sizes: one typical equivalent radius per image, log-uniform in ``radius``, and per-nucleus
      radii spread by ``size_spread`` (log-normal), clipped to ``radius``;
    * textured, uneven intensity: chromatin-like smoothed noise, bright spots and a brighter rim;
    * dim next to bright: per-nucleus brightness log-uniform in ``brightness_range`` (10x);
    * optics and camera: Gaussian PSF blur, smooth background gradient, Poisson (shot) noise
      at ``photons`` expected counts for the brightest nucleus, Gaussian read noise.

    Where nuclei overlap, the image adds both (as a widefield projection would) and every
    overlapping pixel belongs to the nucleus whose centre is nearest in *normalised* distance
    (distance divided by that nucleus' own boundary distance in that direction). Every label is
    one connected region. Nuclei may be clipped by the image border.

    Parameters
    ----------
    shape : tuple of int
        (y, x) or (z, y, x).
    seed : int
        Everything is deterministic given ``seed``. Seeds in :data:`TEST_SEEDS` are reserved for
        held-out benchmarks: never train on them.
    scene : NucleiScene, optional
        Sizes, shapes, crowding, appearance, optics and camera (defaults there).
    **overrides
        Fields of ``scene`` to change, by name (``radius=(4, 6)``, ``photons=50``).

    Returns
    -------
    image : numpy.ndarray of float32
        Photon counts (plus read noise, so it can be slightly negative).
    labels : numpy.ndarray of int32
        0 = background, nuclei 1..N in raster order of their centres.

    Raises
    ------
    ShiftSegError
        On a bad setting.
    """
    scene = with_overrides(scene or NucleiScene(), "nuclei", overrides)
    radius, density, size_spread, elongation = scene.radius, scene.density, scene.size_spread, scene.elongation
    irregularity, cluster, max_overlap = scene.irregularity, scene.cluster, scene.max_overlap
    brightness_range, texture, blur = scene.brightness_range, scene.texture, scene.blur
    background, photons, read_noise = scene.background, scene.photons, scene.read_noise
    shape = _check_shape(shape)
    ndim = len(shape)
    seed = _check_seed(seed)
    low, high = _check_pair(
        _NUCLEI_RADIUS[ndim] if radius is None else radius, "radius", minimum=1.0, maximum=100.0
    )
    density = _real(density, "density")
    if density > 0.8:
        raise ShiftSegError(f"density {density:g} must be in (0, 0.8] (fraction of the image)")
    size_spread = _real(size_spread, "size_spread", strict=False)
    elongation = _NUCLEI_ELONGATION[ndim] if elongation is None else elongation
    elongation = _real(elongation, "elongation", minimum=1.0, strict=False)
    if elongation > 10:
        raise ShiftSegError(f"elongation {elongation:g} must be between 1 and 10")
    irregularity = _unit(irregularity, "irregularity", maximum=0.5)
    cluster = _unit(cluster, "cluster")
    max_overlap = _unit(max_overlap, "max_overlap", maximum=0.5)
    b_low, b_high = _check_pair(brightness_range, "brightness_range", minimum=0.0,
                                maximum=math.inf)
    if b_low <= 0:
        raise ShiftSegError(f"brightness_range {brightness_range!r} must be above 0")
    texture = _unit(texture, "texture")
    blur = _per_axis_float(_NUCLEI_BLUR[ndim] if blur is None else blur, ndim, "blur")
    background = _real(background, "background", strict=False)
    photons = _real(photons, "photons")
    read_noise = _real(read_noise, "read_noise", strict=False)

    shape_rng, place_rng, tex_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    # Sizes: one typical radius per image, then a per-nucleus spread.
    typical = math.exp(shape_rng.uniform(math.log(low), math.log(high)))
    unit_size = math.pi * typical**2 if ndim == 2 else 4 / 3 * math.pi * typical**3
    n = max(1, round(density * math.prod(shape) / unit_size))
    radii = np.clip(typical * np.exp(size_spread * shape_rng.standard_normal(n)), low, high)
    radii = np.sort(radii)[::-1]  # large first: they are the hardest to fit

    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    image = np.zeros(shape, dtype=np.float32)
    extent = np.asarray(shape, dtype=np.float64)
    centres: list[np.ndarray] = []
    placed_radii: list[float] = []
    areas: list[int] = []
    for r in radii:
        frac = shape_rng.uniform(-0.5, 0.5, ndim)
        d, reach = _nucleus_field(shape_rng, ndim, r, elongation, irregularity, frac)
        inside = d <= 1
        area = int(inside.sum())
        brightness = math.exp(shape_rng.uniform(math.log(b_low), math.log(b_high)))
        rim = shape_rng.uniform(0.0, 0.6)
        for _ in range(_NUCLEUS_TRIES):
            if centres and place_rng.random() < cluster:
                other = int(place_rng.integers(len(centres)))
                step = place_rng.standard_normal(ndim)
                step /= max(float(np.linalg.norm(step)), 1e-12)
                step *= (r + placed_radii[other]) * place_rng.uniform(0.7, 1.0)
                centre = np.round(centres[other] + step).astype(np.int64)
                if np.any(centre < 0) or np.any(centre >= extent):
                    continue
            else:
                centre = np.floor(place_rng.random(ndim) * extent).astype(np.int64)
            image_box, local_box = _clip_box(centre, reach, shape)
            mask = inside[local_box]
            if not mask.any():
                continue
            hit = labels[image_box][mask]
            hit = hit[hit > 0]
            if hit.size:
                if hit.size > max_overlap * area:
                    continue
                counts = np.bincount(hit)
                owners = np.flatnonzero(counts)
                if np.any(counts[owners] > max_overlap * np.asarray(areas)[owners - 1]):
                    continue
            break
        else:
            continue
        index = len(centres) + 1
        local_d = d[local_box]
        wins = mask & (local_d < best[image_box])
        labels[image_box][wins] = index
        best[image_box][wins] = local_d[wins]
        profile = brightness * (1 + rim * np.clip((local_d - 0.6) / 0.4, 0, 1))
        image[image_box] += np.where(mask, profile, 0).astype(np.float32)
        centres.append(centre.astype(np.float64))
        placed_radii.append(float(r))
        areas.append(area)

    labels = _keep_connected(labels)
    # Ids in raster order of the centres, then 1..N without gaps.
    if centres:
        order = np.lexsort(np.asarray(centres).T[::-1])
        lookup = np.zeros(len(centres) + 1, dtype=np.int32)
        lookup[order + 1] = np.arange(1, len(centres) + 1, dtype=np.int32)
        labels = lookup[labels]
    labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)

    # Chromatin texture (fine + coarse smoothed noise) and bright spots, inside nuclei only.
    fine = ndimage.gaussian_filter(tex_rng.standard_normal(shape, dtype=np.float32), 1.0)
    coarse = ndimage.gaussian_filter(tex_rng.standard_normal(shape, dtype=np.float32), 3.0)
    fine /= max(float(fine.std()), 1e-6)
    coarse /= max(float(coarse.std()), 1e-6)
    spots = ndimage.gaussian_filter(
        (tex_rng.random(shape) < 0.004).astype(np.float32), 1.0
    ) * np.float32(2 * math.pi if ndim == 2 else 8.0)
    modulation = 1 + texture * (0.6 * fine + 0.4 * coarse) + texture * spots
    image *= np.clip(modulation, 0.2, None)
    if any(s > 0 for s in blur):
        image = ndimage.gaussian_filter(image, blur, mode="reflect")
    # Smooth background: a random linear ramp plus a broad blob field.
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    direction = tex_rng.standard_normal(ndim)
    direction /= np.linalg.norm(direction)
    ramp = sum(v * (g / max(s - 1, 1) - 0.5) for v, g, s in zip(direction, grids, shape))
    blobs = ndimage.gaussian_filter(
        tex_rng.standard_normal(tuple(max(s // 16, 1) for s in shape)), 1.0
    )
    blobs = ndimage.zoom(blobs / max(float(blobs.std()), 1e-6), [s / b for s, b in
                         zip(shape, blobs.shape)], order=1, grid_mode=True, mode="nearest")
    level = background * (1 + 0.8 * ramp + 0.25 * blobs)
    image += np.clip(level, 0, None).astype(np.float32)
    counts = noise_rng.poisson(image.astype(np.float64) * photons).astype(np.float32)
    if read_noise > 0:
        counts += noise_rng.standard_normal(shape, dtype=np.float32) * np.float32(read_noise)
    return counts, labels


def _per_axis_float(value, ndim: int, name: str) -> tuple[float, ...]:
    values = (value,) * ndim if isinstance(value, Real) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != ndim:
        raise ShiftSegError(f"{name} {value!r} must be a number >= 0 or {ndim} such numbers")
    return tuple(_real(v, name, strict=False) for v in values)
