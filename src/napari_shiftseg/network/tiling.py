"""Tile plans: where each tile reads, what it keeps, and where that goes.

The plan is solved per axis in 1-D (:class:`AxisPlan`) and composed to N-D, as CSBDeep's
``tile_iterator_1d``/``tile_iterator`` do. For the default ``exact`` mode (THEORY.md, result 3)::

    image coords   0         T         2T        3T = ceil(size/T)·T
                   |  tile 0 |  tile 1 |  tile 2 :  |            output tiles, n·f^l each,
                   |---------|---------|--------:--|            starting on the GLOBAL f^l grid
               <pad|                            size|pad after>  the image is reflect-padded
      window 0  [--+---------+--]                                ONCE, at its outer border,
      window 1            [--+---------+--]                      so the last tile is complete
                  input_offset          \\ window = geometry.tile_input_size(T)

Every window starts ``geometry.input_offset`` before its tile, so all windows lie on the same
phase of the f^l grid as the whole-image input, and stitched output equals whole-image output
exactly. Two comparison modes exist to show what goes wrong otherwise:

- ``naive``: the tile is used as given (no snapping to n·f^l) and the last tile is moved
  inward to end at the image border - the common mistake; both break exactness.
- ``blend``: overlapping tiles (overlap 0.25) averaged with a Gaussian window, as MONAI's
  ``sliding_window_inference`` and nnU-Net do.

All sizes come from :class:`~napari_shiftseg.network.geometry.UNetGeometry`; this module only places
tiles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..util._errors import ShiftSegError
from .geometry import AxisGeometry, UNetGeometry

MODES = ("exact", "naive", "blend")
BLEND_OVERLAP = 0.25
BLEND_SIGMA_SCALE = 0.125  # MONAI's default: sigma = 0.125 * tile size


# ---- reflect padding ---------------------------------------------------------------------
def reflect_index(coords, size: int) -> np.ndarray:
    """Image index for each (possibly outside) coordinate under repeated reflection.

    The mirror does not repeat the edge voxel (numpy's ``reflect``): ``-1 -> 1``,
    ``size -> size - 2``. Reflection continues periodically (period ``2·(size − 1)``), so a
    coordinate maps to the same voxel whatever the pad width: tiled and whole-image inputs see
    identical values at identical global coordinates, however far each is padded.
    """
    coords = np.asarray(coords, dtype=np.int64)
    if size == 1:
        return np.zeros_like(coords)
    period = 2 * (size - 1)
    m = np.mod(coords, period)
    return np.where(m < size, m, period - m)


def _runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """Split an index array into runs (first, length, step) with step +1, -1 or 0."""
    runs = []
    i, n = 0, len(index)
    while i < n:
        step = int(index[i + 1] - index[i]) if i + 1 < n else 1
        if step not in (-1, 0, 1):
            step = 1
        j = i + 1
        while j < n and index[j] - index[j - 1] == step:
            j += 1
        runs.append((int(index[i]), j - i, step))
        i = j
    return runs


def reflect_pad(x, pad_width: Sequence[tuple[int, int]]):
    """Reflect-pad ``x`` (numpy or dask) by ``pad_width``; lazy for dask arrays.

    Unlike ``dask.array.pad(mode="reflect")``, which returns a wrongly sized array once a pad
    is wider than the axis (dask 2026.8: 3 voxels padded by 7 give 7, not 17), any width works
    here: the padded axis is assembled from forward and reversed slices of the source
    (:func:`reflect_index`), so a dask source stays lazy and only the slices a tile needs are
    ever read.
    """
    is_dask = hasattr(x, "dask")
    if is_dask:
        import dask.array as da

        concatenate, repeat = da.concatenate, da.repeat
    else:
        x = np.asarray(x)
        concatenate, repeat = np.concatenate, np.repeat
    if len(pad_width) != x.ndim:
        raise ValueError(f"pad_width has {len(pad_width)} axes, the array {x.ndim}")
    for axis, (before, after) in enumerate(pad_width):
        if before < 0 or after < 0:
            raise ValueError(f"pad widths must be >= 0, got {pad_width}")
        if before == after == 0:
            continue
        size = x.shape[axis]
        index = reflect_index(np.arange(-before, size + after), size)
        pieces = []
        for first, length, step in _runs(index):
            sl = [slice(None)] * x.ndim
            if step == 0:
                sl[axis] = slice(first, first + 1)
                pieces.append(repeat(x[tuple(sl)], length, axis=axis))
            elif step == 1:
                sl[axis] = slice(first, first + length)
                pieces.append(x[tuple(sl)])
            else:
                sl[axis] = slice(first - length + 1, first + 1)
                rev = [slice(None)] * x.ndim
                rev[axis] = slice(None, None, -1)
                pieces.append(x[tuple(sl)][tuple(rev)])
        x = pieces[0] if len(pieces) == 1 else concatenate(pieces, axis=axis)
    return x


def gaussian_weight(shape: Sequence[int], sigma_scale: float = BLEND_SIGMA_SCALE) -> np.ndarray:
    """Separable Gaussian importance map (max 1) for blending tiles, as in MONAI/nnU-Net."""
    weight = np.ones((), dtype=np.float64)
    for n in shape:
        sigma = max(sigma_scale * n, 1e-3)
        g = np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / sigma) ** 2)
        weight = np.multiply.outer(weight, g)
    # MONAI clamps the map away from zero so that border voxels never get weight 0.
    weight = np.maximum(weight / weight.max(), 1e-3)
    return weight.astype(np.float32)


# ---- 1-D plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis.

    Attributes
    ----------
    size : int
        Image extent along the axis.
    requested, tile : int
        Requested and used output tile length.
    stride : int
        Distance between tile starts (``tile``, or less in ``blend`` mode).
    compute : int
        Raw network outputs per tile (a valid output size >= the tile).
    window : int
        Input window per tile (a valid input size), ``geometry.input_size(compute)``.
    offset : int
        Window start minus tile start in image coordinates (``geometry.input_offset``).
    crop : int
        Index in the raw output of the tile's first voxel (``geometry.crop_front``).
    starts : tuple of int
        Image coordinate of each tile's first output voxel.
    pad : (int, int)
        Reflect padding before and after the image so every window fits.
    """

    size: int
    requested: int
    tile: int
    stride: int
    compute: int
    window: int
    offset: int
    crop: int
    starts: tuple[int, ...]
    pad: tuple[int, int]

    @property
    def count(self) -> int:
        return len(self.starts)

    def write(self, k: int) -> slice:
        """Image region tile ``k`` is responsible for (disjoint unless blending)."""
        start = self.starts[k]
        if self.stride == self.tile:
            # exact/naive: the k-th slot of the regular grid; a naive last tile that was moved
            # inward still only writes its own slot.
            lo = k * self.tile
            return slice(lo, min(lo + self.tile, self.size))
        return slice(start, min(start + self.tile, self.size))

    def window_slice(self, k: int) -> slice:
        """Input window of tile ``k`` in padded coordinates."""
        lo = self.starts[k] + self.offset + self.pad[0]
        return slice(lo, lo + self.window)

    def crop_slice(self, k: int) -> slice:
        """Part of tile ``k``'s raw network output that lands in :meth:`write`."""
        w = self.write(k)
        lo = self.crop + w.start - self.starts[k]
        return slice(lo, lo + w.stop - w.start)

    @property
    def padded(self) -> int:
        return self.size + self.pad[0] + self.pad[1]

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Interior image positions p where a tile border lies between p − 1 and p."""
        edges: set[int] = set()
        for k in range(self.count):
            w = self.write(k)
            edges.update((w.start, w.stop))
        return tuple(sorted(e for e in edges if 0 < e < self.size))


def _finish(size, requested, tile, stride, compute, geometry, starts) -> AxisPlan:
    window = geometry.input_size(compute)
    offset = geometry.input_offset
    before = max(0, -(starts[0] + offset))
    after = max(0, starts[-1] + offset + window - size)
    return AxisPlan(size, requested, tile, stride, compute, window, offset, geometry.crop_front,
                    tuple(starts), (before, after))


def _compute_at_least(geometry: AxisGeometry, n: int) -> int:
    """Smallest valid raw output that holds ``crop_front`` + ``n`` voxels."""
    return geometry.output_size(geometry.training_input_size(n + geometry.crop_front))


def axis_exact(size: int, requested: int, geometry: AxisGeometry) -> AxisPlan:
    """Exact tiling of one axis: n·f^l tiles from 0 on the global grid."""
    if requested < geometry.grid:
        raise ShiftSegError(
            f"tile {requested} is smaller than f^l = {geometry.grid}; exact tiling needs tiles "
            f"that are multiples of {geometry.grid} (e.g. {geometry.grid * max(1, 64 // geometry.grid)})"
        )
    # No tile larger than one covering the whole axis: the extra would be padding only.
    tile = min(geometry.snap_tile(requested), geometry.cover(size))
    starts = range(0, size, tile)
    return _finish(size, requested, tile, tile, geometry.tile_compute_size(tile), geometry, list(starts))


def axis_naive(size: int, requested: int, geometry: AxisGeometry) -> AxisPlan:
    """The common mistake: the tile as given, and the last tile moved inward to the border."""
    tile = int(requested)
    count = -(-size // tile)
    starts = [k * tile for k in range(count - 1)] + [max(size - tile, 0)]
    return _finish(size, requested, tile, tile, _compute_at_least(geometry, tile), geometry, starts)


def axis_blend(size: int, requested: int, geometry: AxisGeometry,
               overlap: float = BLEND_OVERLAP) -> AxisPlan:
    """Overlapping tiles every ``tile·(1 − overlap)`` voxels (MONAI's scan interval)."""
    tile = int(requested)
    stride = max(1, int(tile * (1 - overlap)))
    count = 1 if size <= tile else math.ceil((size - tile) / stride) + 1
    starts = [k * stride for k in range(count)]
    return _finish(size, requested, tile, stride, _compute_at_least(geometry, tile), geometry, starts)


# ---- N-D plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`.

    ``window`` (padded coordinates) is fed to the network; ``crop`` of the raw output is written
    to ``write`` (image coordinates).
    """

    index: tuple[int, ...]
    start: tuple[int, ...]
    window: tuple[slice, ...]
    crop: tuple[slice, ...]
    write: tuple[slice, ...]


@dataclass(frozen=True, repr=False)
class TilePlan:
    """Tiles of an image, composed from one :class:`AxisPlan` per axis."""

    image_shape: tuple[int, ...]
    mode: str
    geometry: UNetGeometry
    axes: tuple[AxisPlan, ...]
    message: str = ""

    # ---- per-axis summaries --------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.image_shape)

    @property
    def requested(self) -> tuple[int, ...]:
        return tuple(a.requested for a in self.axes)

    @property
    def tile(self) -> tuple[int, ...]:
        return tuple(a.tile for a in self.axes)

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(a.stride for a in self.axes)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of tiles per axis."""
        return tuple(a.count for a in self.axes)

    @property
    def n_tiles(self) -> int:
        return int(np.prod(self.grid_shape))

    @property
    def window_shape(self) -> tuple[int, ...]:
        return tuple(a.window for a in self.axes)

    @property
    def compute_shape(self) -> tuple[int, ...]:
        return tuple(a.compute for a in self.axes)

    @property
    def pad_width(self) -> tuple[tuple[int, int], ...]:
        return tuple(a.pad for a in self.axes)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(a.padded for a in self.axes)

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """Dask chunks of the output: one chunk per tile (exact/naive) or per stride (blend)."""
        out = []
        for a in self.axes:
            if self.mode == "blend":
                edges = [0, *a.boundaries, a.size]
                out.append(tuple(int(e) for e in np.diff(sorted(set(edges)))))
            else:
                out.append(tuple(a.write(k).stop - a.write(k).start for k in range(a.count)))
        return tuple(out)

    @property
    def amplification(self) -> float:
        """Network input voxels computed per output voxel of the image."""
        computed = self.n_tiles * np.prod(self.window_shape, dtype=np.float64)
        return float(computed / np.prod(self.image_shape, dtype=np.float64))

    @property
    def grid_note(self) -> str:
        """Why stitched output does or does not equal the whole image's: where tiles start
        relative to the f^l grid. Off the grid, a tile's outputs come from other relative-distinct
        functions than the whole image's at the same voxel (THEORY.md), so its error depends on
        the tile *start* modulo f^l: naive tiles start every tile, blended ones every stride (3/4
        of a tile). Some offsets happen to cost less with a given model (e.g. half a grid cell),
        which is why naive can beat blend at one tile size and lose at the next."""
        starts = [a.stride for a in self.axes]
        grids = list(self.geometry.grids)[len(self.geometry.grids) - self.ndim:]
        off = [s % g for s, g in zip(starts, grids)]
        step = "every " + " x ".join(map(str, starts)) + " px"
        if not any(off):
            return f"tiles start {step}, on the f^l grid ({' x '.join(map(str, grids))})"
        return (f"tiles start {step}, {' x '.join(map(str, off))} px off the f^l grid "
                f"({' x '.join(map(str, grids))}): not exact")

    # ---- tiles ----------------------------------------------------------------------------
    def tile_at(self, index: Sequence[int]) -> Tile:
        index = tuple(int(i) for i in index)
        return Tile(
            index=index,
            start=tuple(a.starts[k] for a, k in zip(self.axes, index)),
            window=tuple(a.window_slice(k) for a, k in zip(self.axes, index)),
            crop=tuple(a.crop_slice(k) for a, k in zip(self.axes, index)),
            write=tuple(a.write(k) for a, k in zip(self.axes, index)),
        )

    def __iter__(self) -> Iterator[Tile]:
        for index in itertools.product(*(range(n) for n in self.grid_shape)):
            yield self.tile_at(index)

    def __len__(self) -> int:
        return self.n_tiles

    def __repr__(self) -> str:
        lines = [
            f"TilePlan(mode={self.mode!r}, image={self.image_shape}, tile={self.tile}, "
            f"{' x '.join(map(str, self.grid_shape))} = {self.n_tiles} tiles, "
            f"window={self.window_shape}, amplification={self.amplification:.2f})"
        ]
        for i, a in enumerate(self.axes):
            last = a.write(a.count - 1)
            lines.append(
                f"  axis {i}: size {a.size} = {a.count} x tile {a.tile} (stride {a.stride}, last "
                f"writes {last.stop - last.start}), window {a.window} from tile start "
                f"{a.offset:+d}, reflect pad {a.pad}"
            )
        if self.message:
            lines.append(f"  note: {self.message}")
        return "\n".join(lines)


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        values = (int(value),) * ndim
    else:
        try:
            values = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ShiftSegError(f"{name} must be an integer or one integer per axis, got {value!r}") from None
        if len(values) != ndim:
            raise ShiftSegError(f"{name} {tuple(value)} has {len(values)} axes but the image has {ndim}")
    if any(v < 1 for v in values):
        raise ShiftSegError(f"{name} must be positive, got {values}")
    return values


def tile_for(geometry: UNetGeometry, requested, mode: str = "exact"):
    """The output tile a run uses for ``requested``, before the image caps it at one tile
    covering the image: the one answer for widgets, sweep and CLI.

    ``"auto"`` stays ``"auto"`` (decided for the device that runs,
    :func:`~napari_shiftseg.network.devices.resolve_tile`); exact mode snaps to n·f^l per axis; naive
    and blend use the request as given (on purpose: they show what off-grid tiles do).
    """
    if isinstance(requested, str):
        if requested != "auto":
            raise ShiftSegError(f"tile must be a number of voxels or 'auto', got {requested!r}")
        return requested
    if mode not in MODES:
        raise ShiftSegError(f"tiling mode must be one of {MODES}, got {mode!r}")
    return geometry.snap_tile(requested) if mode == "exact" else requested


def tile_plan(image_shape: Sequence[int], geometry: UNetGeometry, tile: int | Sequence[int],
              mode: str = "exact") -> TilePlan:
    """Plan the tiles that cover an image of ``image_shape`` (spatial axes only).

    Parameters
    ----------
    image_shape : sequence of int
        Spatial shape, one entry per axis of ``geometry`` (``geometry.ndim``).
    geometry : UNetGeometry
        Size rules of the network.
    tile : int or sequence of int
        Requested output tile per axis; anisotropic tiles such as (32, 256, 256) are fine.
    mode : {"exact", "naive", "blend"}
        ``exact`` snaps the tile to the nearest n·f^l (never below f^l, never larger than one
        tile covering the axis) and gives output identical to whole-image inference;
        ``naive`` and ``blend`` use the tile as given and exist for comparison.

    Returns
    -------
    TilePlan
        ``plan.message`` says when the tile was changed.

    Raises
    ------
    ShiftSegError
        Unknown mode, a shape that does not match the geometry, or (exact) a tile below f^l.

    Examples
    --------
    >>> from napari_shiftseg.network.geometry import UNetGeometry
    >>> plan = tile_plan((300, 200), UNetGeometry(ndim=2, levels=3), 100)
    >>> plan.tile, plan.grid_shape
    ((96, 96), (4, 3))
    """
    if mode not in MODES:
        raise ShiftSegError(f"tiling mode must be one of {MODES}, got {mode!r}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != geometry.ndim:
        raise ShiftSegError(f"image shape {shape} has {len(shape)} axes but the model is {geometry.ndim}D")
    if any(s < 1 for s in shape):
        raise ShiftSegError(f"the image is empty (shape {shape})")
    requested = _per_axis(tile, len(shape), "tile")
    build = {"exact": axis_exact, "naive": axis_naive, "blend": axis_blend}[mode]
    # Each axis is planned alone, with its own rules (an anisotropic network's F_a differ).
    axes = tuple(build(s, t, geometry.axis(a)) for a, (s, t) in enumerate(zip(shape, requested)))
    used = tuple(a.tile for a in axes)
    message = ""
    if used != requested:
        snapped = geometry.snap_tile(requested)
        reasons = []
        if snapped != requested:
            grid = f"f^l = {geometry.grid}" if geometry.isotropic else f"the grid {geometry.grids}"
            reasons.append(f"multiples of {grid} for exact stitching")
        if used != snapped:
            reasons.append("no larger than one tile covering the image")
        message = f"tile {requested} changed to {used} ({'; '.join(reasons)})"
    return TilePlan(shape, mode, geometry, axes, message)
