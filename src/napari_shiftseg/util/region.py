"""A box of voxels as a small immutable value: offset + shape per axis.

Tiles, previews, context crops and proofreading boxes were slices worked out by hand
(``slice(r.start - o.start, r.stop - o.start)`` at seven sites), where an off-by-one or a
``None`` start is easy to write and hard to see. :class:`Region` says what those sums mean
(``relative_to``, ``intersect``, ``grow``) and is hashable, so it can key a cache or a dict of
tiles (funlib.geometry's ``Roi`` is the model). The grid rules (snapping to f^l, the network's
context) stay with :class:`~napari_shiftseg.network.geometry.UNetGeometry`; :meth:`Region.snap` and
:meth:`Region.with_context` ask it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import ShiftSegError
from .validate import is_whole

__all__ = ["Region"]


def _ints(values, name: str) -> tuple[int, ...]:
    values = tuple(values)
    if not all(is_whole(v) for v in values):
        raise ShiftSegError(f"a region's {name} must be whole numbers, got {values!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class Region:
    """Voxels ``offset[a] <= i < offset[a] + shape[a]`` on every axis ``a``."""

    offset: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self):
        offset, shape = _ints(self.offset, "offset"), _ints(self.shape, "shape")
        if len(offset) != len(shape):
            raise ShiftSegError(f"a region needs one offset per axis: offset {offset}, shape {shape}")
        if any(s < 0 for s in shape):
            raise ShiftSegError(f"a region's shape cannot be negative, got {shape}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "shape", shape)

    # ---- making one --------------------------------------------------------------------
    @classmethod
    def whole(cls, shape: Sequence[int]) -> Region:
        """All of an array of ``shape``."""
        return cls((0,) * len(shape), tuple(shape))

    @classmethod
    def from_slices(cls, slices: Sequence[slice], shape: Sequence[int] | None = None) -> Region:
        """The region ``array[slices]`` reads; open ends (``None``) need the array's ``shape``.
        Steps other than 1 are refused (a region is a box)."""
        offset, size = [], []
        for axis, s in enumerate(slices):
            if s.step not in (None, 1):
                raise ShiftSegError(f"a region is a box: slice {s} has a step")
            if shape is None and (s.start is None or s.stop is None):
                raise ShiftSegError(f"slice {s} has an open end: give the array's shape")
            n = None if shape is None else int(shape[axis])
            start, stop = (s.start, s.stop) if n is None else slice(s.start, s.stop).indices(n)[:2]
            offset.append(start)
            size.append(max(0, stop - start))
        return cls(tuple(offset), tuple(size))

    # ---- reading it ----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offset, self.shape))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def empty(self) -> bool:
        return self.size == 0

    def to_slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, e) for o, e in zip(self.offset, self.stop))

    def contains(self, other: Region) -> bool:
        """Every voxel of ``other`` is in this region (an empty ``other`` always is)."""
        self._same_ndim(other)
        return other.empty or all(a <= b and c <= d for a, b, c, d in
                                  zip(self.offset, other.offset, other.stop, self.stop))

    # ---- new regions -----------------------------------------------------------------------
    def intersect(self, other: Region) -> Region:
        """The voxels in both (an empty region where they do not meet)."""
        self._same_ndim(other)
        lo = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        hi = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        return Region(lo, tuple(max(0, h - low) for low, h in zip(lo, hi)))

    def union(self, other: Region) -> Region:
        """The smallest region holding both (an empty one counts for nothing)."""
        self._same_ndim(other)
        if self.empty or other.empty:
            return other if self.empty else self
        lo = tuple(min(a, b) for a, b in zip(self.offset, other.offset))
        hi = tuple(max(a, b) for a, b in zip(self.stop, other.stop))
        return Region(lo, tuple(h - low for low, h in zip(lo, hi)))

    def grow(self, before: int | Sequence[int], after: int | Sequence[int] | None = None,
             within: Region | None = None) -> Region:
        """Wider by ``before`` voxels below and ``after`` (default ``before``) above each axis,
        then cut to ``within``."""
        before = self._per_axis(before)
        after = before if after is None else self._per_axis(after)
        grown = Region(tuple(o - b for o, b in zip(self.offset, before)),
                       tuple(s + b + a for s, b, a in zip(self.shape, before, after)))
        return grown if within is None else grown.intersect(within)

    def shift(self, by: int | Sequence[int]) -> Region:
        return Region(tuple(o + d for o, d in zip(self.offset, self._per_axis(by))), self.shape)

    def relative_to(self, outer: Region) -> Region:
        """This region in the coordinates of ``outer`` (e.g. a preview inside the crop that was
        predicted with its context): ``array_of_outer[region.relative_to(outer).to_slices()]``."""
        self._same_ndim(outer)
        return Region(tuple(a - b for a, b in zip(self.offset, outer.offset)), self.shape)

    def snap(self, geometry, shape: Sequence[int]) -> Region:
        """Widened to whole f^l cells of ``geometry`` (starts on the global grid), within an
        image of ``shape`` (:meth:`~napari_shiftseg.network.geometry.UNetGeometry.snap_region`)."""
        return Region.from_slices(geometry.snap_region(self.to_slices(), shape), shape)

    def with_context(self, geometry, shape: Sequence[int]) -> Region:
        """Grown past the network's receptive field, starting on the grid, within ``shape``
        (:meth:`~napari_shiftseg.network.geometry.UNetGeometry.context_region`)."""
        return Region.from_slices(geometry.context_region(self.to_slices(), shape), shape)

    # ---- helpers ---------------------------------------------------------------------------
    def _per_axis(self, value) -> tuple[int, ...]:
        values = (value,) * self.ndim if is_whole(value) else tuple(value)
        if len(values) != self.ndim:
            raise ShiftSegError(f"{values} has {len(values)} axes, the region {self.ndim}")
        return _ints(values, "change")

    def _same_ndim(self, other: Region) -> None:
        if not isinstance(other, Region):
            raise TypeError(f"expected a Region, got {type(other).__name__}")
        if other.ndim != self.ndim:
            raise ShiftSegError(f"regions of {self.ndim} and {other.ndim} axes do not combine")
