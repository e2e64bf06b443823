"""Every size rule of the U-Net family, in one immutable value object.

Per axis, a U-Net with ``levels`` (l) max-pool levels of factor ``factor`` (f) and
``convs_per_level`` (c) convolutions of width ``kernel_size`` (k) per level and side::

    in ──c convs──┐                                ┌──c convs──> out
                  pool f        skip (centre crop) up f
                  └──c convs──┐ ............... ┌──┘
                              ...   bottom   ...

Each valid conv removes ``k - 1`` voxels, so with ``r = c·(k-1)``

- context (input − output)  = r·(2·(f^l − 1)/(f − 1) + f^l)   (f = 2, r = 4: 4·(3·2^l − 2))
- valid inputs:  x ≡ r·(f^l − 1)/(f − 1)  (mod f^l), so every pooling divides evenly
- raw outputs are ≡ −r·(f^l − 1)/(f − 1) (mod f^l), e.g. ≡ 4 (mod 8) for l = 3: never a
  multiple of f^l. To get an ``n·f^l`` output tile we compute ``n·f^l + extra`` outputs and
  crop the same ``extra`` voxels in every tile (``crop_front`` before, the rest after).

Output voxel ``j`` of a network whose input starts at ``a`` sits at ``a + context/2 + j``.
Tile origins on the global f^l grid therefore give exact tile-and-stitch (THEORY.md, result 3).
Same ("zero") padding keeps sizes (context 0) but breaks all of the above near borders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..util._errors import ShiftSegError
from ..util.validate import whole

PADDINGS = ("valid", "same")


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    """Broadcast an int or a sequence to one int per axis, refusing mismatched lengths."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    values = tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ShiftSegError(f"{name} {tuple(value)} has {len(values)} axes but the model is {ndim}D")
    return values


#: (field, lowest, highest, why the highest) for every integer field of UNetGeometry. The
#: limits are far beyond any useful network and keep a hostile model file from asking for more
#: layers, voxels or memory than a machine has.
_BOUNDS = (
    ("levels", 1, 6, "deeper U-Nets need tiles hundreds of voxels wide per axis for no gain"),
    ("factor", 2, 4, "pooling by more than 4 discards most of each window"),
    ("convs_per_level", 1, 4, "the paper uses 2; more only widens the context"),
    ("kernel_size", 1, 7, "wider kernels only widen the context"),
)
#: Largest tile grid factor**levels (2**6 = 64, 3**5 = 243, 4**4 = 256 are the largest allowed).
MAX_GRID = 256


@dataclass(frozen=True)
class AxisGeometry:
    """The size rules of one axis: its pooling factor at each level, and the conv loss.

    Every rule is one-dimensional (THEORY.md's argument holds axis by axis), so the N-D rules
    of :class:`UNetGeometry` are these, composed per axis. With the scale of level i
    ``s_i = f_0·…·f_(i−1)`` and the conv loss ``r``:

    - grid period         F = s_l
    - context             2·r·(s_0 + … + s_(l−1)) + r·s_l
    - valid inputs        x ≡ r·(s_0 + … + s_(l−1))  (mod F)

    which for a constant factor f are the formulas of the module docstring.
    """

    factors: tuple[int, ...]
    conv_loss: int
    valid: bool = True

    @property
    def grid(self) -> int:
        """F = ∏ f_i: the period of shift equivariance and the tile grid spacing on this axis."""
        return int(np.prod(self.factors, dtype=np.int64))

    @property
    def _down_loss(self) -> int:
        # r·(s_0 + … + s_(l−1)): what the down path removes, in input voxels, before the bottom.
        return self.conv_loss * int(sum(np.cumprod((1,) + self.factors[:-1])))

    @property
    def context(self) -> int:
        """Input minus output size (both sides together)."""
        return 2 * self._down_loss + self.conv_loss * self.grid

    @property
    def context_per_side(self) -> int:
        return self.context // 2

    @property
    def input_residue(self) -> int:
        """Valid input sizes are ≡ this value (mod F)."""
        return self._down_loss % self.grid if self.valid else 0

    @property
    def output_residue(self) -> int:
        """Raw output sizes are ≡ this (mod F): the ``extra`` cropped from each tile."""
        return (self.input_residue - self.context) % self.grid

    @property
    def crop_front(self) -> int:
        """Voxels cropped before an n·F tile (the rest of ``output_residue`` after)."""
        return self.output_residue // 2

    @property
    def min_input_size(self) -> int:
        """Smallest valid input: the bottom level keeps at least one voxel."""
        return self.input_size(self.output_residue if self.output_residue else self.grid)

    @property
    def input_offset(self) -> int:
        """Input start minus output start for a tile (negative: the input reaches back)."""
        return -(self.context_per_side + self.crop_front)

    @property
    def cell_offset(self) -> int:
        """Image position (mod F) where the bottom-level cells begin under tiling (see
        :attr:`UNetGeometry.cell_offset`)."""
        return (self._down_loss // 2 + self.input_offset) % self.grid if self.valid else 0

    def is_valid_input(self, size: int) -> bool:
        """Whether ``size`` passes every pooling evenly and leaves a positive output."""
        size = int(size)
        if not self.valid:
            return size > 0 and size % self.grid == 0
        return size % self.grid == self.input_residue and size - self.context > 0

    def output_size(self, input_size: int) -> int:
        if not self.is_valid_input(input_size):
            raise ShiftSegError(
                f"input size {input_size} is not valid for this U-Net: sizes must be "
                f"≡ {self.input_residue} (mod {self.grid}) and at least {self.min_input_size}"
                f" (nearest valid: {self.nearest_valid_input(input_size)})"
            )
        return int(input_size) - self.context

    def input_size(self, output_size: int) -> int:
        size = int(output_size) + self.context
        if not self.is_valid_input(size):
            raise ShiftSegError(
                f"no valid input gives an output of {output_size}: outputs must be "
                f"≡ {self.output_residue} (mod {self.grid})"
            )
        return size

    def nearest_valid_input(self, size: int) -> int:
        size = max(int(size), self.min_input_size)
        return size + (self.input_residue - size) % self.grid

    def snap_tile(self, tile: int) -> int:
        tile = int(tile)
        if tile < 1:
            raise ShiftSegError(f"tile size must be positive, got {tile}")
        return max(1, (tile + self.grid // 2) // self.grid) * self.grid

    def cover(self, size: int) -> int:
        return max(1, -(-int(size) // self.grid)) * self.grid

    def tile_compute_size(self, tile: int) -> int:
        return int(tile) + self.output_residue

    def tile_input_size(self, tile: int) -> int:
        return self.input_size(self.tile_compute_size(tile))

    def training_input_size(self, output_window: int) -> int:
        out = int(output_window)
        out += (self.output_residue - out) % self.grid
        return self.input_size(max(out, self.output_residue or self.grid))

    def snap_span(self, r: slice, size: int) -> slice:
        """``r`` widened to whole F cells (see :meth:`UNetGeometry.snap_region`)."""
        start = max(0, (r.start // self.grid) * self.grid)
        stop = min(int(size), -(-r.stop // self.grid) * self.grid)
        return slice(start, max(stop, start + 1))

    def context_span(self, r: slice, size: int) -> slice:
        """``r`` grown past its receptive field (see :meth:`UNetGeometry.context_region`)."""
        before = self.cover(self.grid - self.input_offset)
        after = self.tile_input_size(self.grid) + self.input_offset + self.grid
        return slice(max(0, (r.start // self.grid) * self.grid - before), min(int(size), r.stop + after))


def _as_factors(value, levels: int, ndim: int):
    """Per-level, per-axis pooling factors from a model file or a caller, or a clear error."""
    try:
        rows = tuple(tuple(v for v in row) for row in value)
    except TypeError:
        raise ShiftSegError(f"factors must be one (per-axis) row per level, got {value!r}") from None
    if len(rows) != levels or any(len(row) != ndim for row in rows):
        raise ShiftSegError(
            f"factors {value!r} must have one row per level ({levels}) with one factor per axis "
            f"({ndim}), e.g. {((1,) + (2,) * (ndim - 1),) + ((2,) * ndim,) * (levels - 1)}")
    for row in rows:
        for f in row:
            whole(f, "a pooling factor", 1, 4, "pooling by more than 4 discards most of each window")
    return tuple(tuple(int(f) for f in row) for row in rows)


@dataclass(frozen=True)
class UNetGeometry:
    """Size rules of a U-Net with ``levels`` pooling levels of factor ``factor``.

    Parameters
    ----------
    ndim : int
        Spatial dimensionality d (2 or 3).
    levels : int
        Number of max-pool levels l (>= 1).
    factor : int
        Pooling factor f (kernel = stride = f), >= 2, on every axis and level unless
        ``factors`` says otherwise.
    convs_per_level : int
        Convolutions per level and side (the paper uses 2).
    kernel_size : int
        Odd width of each convolution (the paper uses 3).
    padding : {"valid", "same"}
        Valid convolutions (exact tiling) or zero "same" padding (for comparison only).
    factors : tuple of tuples, optional
        Anisotropic networks: the pooling factor per level and axis (1–4), e.g.
        ``((1, 2, 2), (2, 2, 2))`` for a stack whose z steps are about twice its xy pixels.
        Each axis a then has its own grid period F_a = ∏ factors[i][a], context and valid sizes
        (:meth:`axis`); the scalar properties (``grid``, ``context``, …) are only defined when
        every axis agrees. Given as equal factors everywhere, it is stored as ``factor``.
    """

    ndim: int = 2
    levels: int = 3
    factor: int = 2
    convs_per_level: int = 2
    kernel_size: int = 3
    padding: str = "valid"
    factors: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        # Model files are untrusted: every field is type- and range-checked here, before any
        # size is computed from it (a levels of 10**6 must not reach factor**levels).
        if isinstance(self.ndim, bool) or not isinstance(self.ndim, (int, np.integer)) or self.ndim not in (2, 3):
            raise ShiftSegError(f"ndim must be 2 or 3, got {self.ndim!r}")
        for name, low, high, why in _BOUNDS:
            whole(getattr(self, name), name, low, high, why)
        if self.kernel_size % 2 == 0:
            raise ShiftSegError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        if self.padding not in PADDINGS:
            raise ShiftSegError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.factors is not None:
            rows = _as_factors(self.factors, self.levels, self.ndim)
            flat = {f for row in rows for f in row}
            if len(flat) == 1 and min(flat) >= 2:  # isotropic after all: one canonical form
                object.__setattr__(self, "factor", flat.pop())
                object.__setattr__(self, "factors", None)
            else:
                object.__setattr__(self, "factors", rows)
        for axis in range(self.ndim):
            grid = self.axis(axis).grid
            if grid > MAX_GRID:
                raise ShiftSegError(
                    f"the pooling factors multiply to {grid} on axis {axis}, over {MAX_GRID}: every "
                    "tile would have to be a multiple of it, plus an even larger context; use fewer "
                    "levels or smaller factors")
        if self.factors is not None and self.padding != "valid":
            raise ShiftSegError("per-axis pooling factors need valid padding")

    # ---- per axis ------------------------------------------------------------------------
    def level_factors(self, level: int) -> tuple[int, ...]:
        """Pooling factor of each axis at ``level`` (0 = the full-resolution level)."""
        return self.factors[level] if self.factors is not None else (self.factor,) * self.ndim

    def axis(self, a: int) -> AxisGeometry:
        """The one-dimensional size rules of axis ``a``."""
        return AxisGeometry(tuple(self.level_factors(i)[a] for i in range(self.levels)),
                            self.conv_loss, self.valid)

    @property
    def axes(self) -> tuple[AxisGeometry, ...]:
        return tuple(self.axis(a) for a in range(self.ndim))

    @property
    def isotropic(self) -> bool:
        return self.factors is None

    @property
    def grids(self) -> tuple[int, ...]:
        """F_a per axis (all f^l for an isotropic network)."""
        return tuple(a.grid for a in self.axes)

    @property
    def contexts(self) -> tuple[int, ...]:
        return tuple(a.context for a in self.axes)

    @property
    def input_offsets(self) -> tuple[int, ...]:
        return tuple(a.input_offset for a in self.axes)

    @property
    def crop_fronts(self) -> tuple[int, ...]:
        return tuple(a.crop_front for a in self.axes)

    @property
    def contexts_per_side(self) -> tuple[int, ...]:
        return tuple(a.context_per_side for a in self.axes)

    @property
    def cell_offsets(self) -> tuple[int, ...]:
        return tuple(a.cell_offset for a in self.axes)

    def _one(self, what: str) -> AxisGeometry:
        """Axis 0's rules, for a value that must be the same on every axis."""
        if not self.isotropic:
            raise ShiftSegError(
                f"this network pools differently per axis ({self.factors}); its {what} differs per "
                "axis: give one size per axis")
        return self.axis(0)

    def _per_axis_call(self, name: str, value):
        if isinstance(value, (int, np.integer)):
            return getattr(self._one(name), name)(value)
        values = tuple(value)
        if len(values) != self.ndim:
            raise ShiftSegError(f"{name}: {values} has {len(values)} axes but the model is {self.ndim}D")
        return tuple(getattr(self.axis(a), name)(v) for a, v in enumerate(values))

    # ---- the basic numbers (the same on every axis of an isotropic network) -------------
    @property
    def valid(self) -> bool:
        return self.padding == "valid"

    @property
    def grid(self) -> int:
        """f^l: the period of shift equivariance and the tile grid spacing."""
        return self._one("grid").grid

    @property
    def capacity(self) -> int:
        """∏ F_a (f^(d·l) when isotropic): most same-looking objects the network can tell
        apart (Lemma 1)."""
        return int(np.prod(self.grids))

    @property
    def conv_loss(self) -> int:
        """Voxels removed per level and side by the valid convolutions: c·(k − 1)."""
        return self.convs_per_level * (self.kernel_size - 1) if self.valid else 0

    @property
    def context(self) -> int:
        """Input minus output size per axis (both sides together)."""
        return self._one("context").context

    @property
    def context_per_side(self) -> int:
        return self._one("context").context_per_side

    @property
    def input_residue(self) -> int:
        """Valid input sizes are ≡ this value (mod f^l)."""
        return self._one("valid input sizes").input_residue

    @property
    def output_residue(self) -> int:
        """Raw output sizes are ≡ this (mod f^l): the ``extra`` cropped from each tile."""
        return self._one("output crop").output_residue

    @property
    def crop_front(self) -> int:
        """Voxels cropped before an n·f^l tile (the rest of ``output_residue`` after)."""
        return self._one("output crop").crop_front

    @property
    def min_input_size(self) -> int:
        """Smallest valid input: the bottom level keeps at least one voxel."""
        return self._one("smallest input").min_input_size

    # ---- size conversions ------------------------------------------------------------
    def is_valid_input(self, size) -> bool:
        """Whether ``size`` (one int, or one per axis) passes every pooling evenly and leaves a
        positive output."""
        if isinstance(size, (int, np.integer)):
            return self._one("valid input sizes").is_valid_input(int(size))
        return all(self._per_axis_call("is_valid_input", size))

    def output_size(self, input_size: int | Sequence[int]):
        """Network output size for a valid input size (per axis, or one int)."""
        return self._per_axis_call("output_size", input_size)

    def input_size(self, output_size: int | Sequence[int]):
        """Input size that yields a raw output of ``output_size`` (must be a valid output)."""
        return self._per_axis_call("input_size", output_size)

    def nearest_valid_input(self, size):
        """Smallest valid input size >= ``size``."""
        return self._per_axis_call("nearest_valid_input", size)

    def valid_input_sizes(self, low: int, high: int) -> list[int]:
        """All valid input sizes in [low, high]."""
        first = self.nearest_valid_input(low)
        return list(range(first, int(high) + 1, self.grid))

    # ---- tiles on the f^l grid -------------------------------------------------------
    def snap_tile(self, tile: int | Sequence[int]):
        """Round a requested output tile to the nearest multiple of F (at least F; halves up).
        One int for an anisotropic network gives one tile per axis."""
        if isinstance(tile, (int, np.integer)) and not self.isotropic:
            tile = (tile,) * self.ndim
        return self._per_axis_call("snap_tile", tile)

    def cover(self, size: int | Sequence[int]):
        """Smallest n·F output tile (n >= 1) that covers ``size`` voxels: one tile per image."""
        return self._per_axis_call("cover", size)

    def check_tile(self, tile: Sequence[int]) -> tuple[int, ...]:
        """Refuse an output tile that is not n·F_a per axis (the exact-tiling rule)."""
        tile = _per_axis(tile, self.ndim, "tile")
        bad = [t for t, g in zip(tile, self.grids) if t < g or t % g]
        if bad:
            rule = f"f^l = {self.grid}" if self.isotropic else f"the grid {self.grids}"
            raise ShiftSegError(
                f"output tile {tile} must be a multiple of {rule} per axis for exact "
                f"stitching; try {self.snap_tile(tile)}"
            )
        return tile

    def tile_compute_size(self, tile: int | Sequence[int]):
        """Raw output computed for an n·F output tile: tile + output_residue."""
        return self._per_axis_call("tile_compute_size", tile)

    def tile_input_size(self, tile: int | Sequence[int]):
        """Input window needed for an n·F output tile."""
        return self._per_axis_call("tile_input_size", tile)

    @property
    def input_offset(self) -> int:
        """Input start minus output start for a tile (negative: the input reaches back)."""
        return self._one("input offset").input_offset

    def amplification(self, tile: int | Sequence[int]) -> float:
        """Compute per output voxel of a tile relative to one huge tile (input/output volume)."""
        tile = _per_axis(tile, self.ndim, "tile")
        return float(np.prod([self.axis(a).tile_input_size(t) / t for a, t in enumerate(tile)]))

    # ---- regions of an image ------------------------------------------------------------
    def snap_region(self, region: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
        """``region`` widened to whole grid cells (starts on the global grid), within ``shape``.

        Axes before the model's own (the slice axis of a 2D model on a stack) are kept as they
        are. A preview of such a region computes the very tiles a full run computes there.
        """
        lead = len(shape) - self.ndim
        return tuple(region[:lead]) + tuple(
            self.axis(a).snap_span(r, n) for a, (r, n) in enumerate(zip(region[lead:], shape[lead:])))

    def context_region(self, region: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
        """``region`` grown past the receptive field of every voxel in it, starting on the grid.

        Predicting the grown crop whole and cutting ``region`` back out gives exactly the values
        a whole-image run gives there (same grid phase, real image context instead of reflected
        borders): a grid-sized tile containing a voxel reads at most ``grid - input_offset``
        before it and ``tile_input_size(grid) + input_offset + grid`` after it. Leading axes (a
        stack's slices, which see no neighbours) are kept.
        """
        lead = len(shape) - self.ndim
        return tuple(region[:lead]) + tuple(
            self.axis(a).context_span(r, n) for a, (r, n) in enumerate(zip(region[lead:], shape[lead:])))

    # ---- training windows -------------------------------------------------------------
    def training_input_size(self, output_window):
        """Valid input size whose raw output is the smallest valid one >= ``output_window``."""
        return self._per_axis_call("training_input_size", output_window)

    def check_training_window(self, output_window: int | Sequence[int], allow_small: bool = False):
        """Refuse training output windows <= F_a (THEORY.md, result 4) unless asked for."""
        window = _per_axis(output_window, self.ndim, "training window")
        if self.valid and not allow_small and any(w <= g for w, g in zip(window, self.grids)):
            rule = f"f^l = {self.grid}" if self.isotropic else f"the grid {self.grids}"
            raise ShiftSegError(
                f"training output window {window} must be larger than {rule} per "
                "axis: with a smaller window some of the network's f^l phases are never trained "
                "next to each other and the result shows seams on the f^l grid "
                "(use allow_small_window to reproduce that failure on purpose)"
            )
        return window

    # ---- phases -----------------------------------------------------------------------
    @property
    def cell_offset(self) -> int:
        """Image position (mod f^l) where the network's bottom-level cells begin under tiling.

        The deepest pooling cells start half the down path's loss into the input window, which
        itself starts ``-input_offset`` before the output. For f = 2 that is 0 when l >= 3 and 2
        when l = 2; same padding has no offset. Exactness does not depend on it (tiles only need
        a common origin mod f^l), but the grid and phase maps shown to users do.
        """
        return self._one("cell offset").cell_offset

    def phase(self, position: Iterable[int]) -> int:
        """Index (0 … capacity − 1) of the output function u_i that computes a voxel."""
        pos = _per_axis(position, self.ndim, "position")
        cell = [(p - a.cell_offset) % a.grid for p, a in zip(pos, self.axes)]
        return int(np.ravel_multi_index(cell, self.grids))

    def describe(self) -> dict:
        """Human-readable summary used by `shiftseg info` and the widgets."""
        axes = self.axes
        same = self.isotropic

        def show(values):
            return values[0] if same else tuple(values)

        out = {
            "ndim": self.ndim,
            "levels": self.levels,
            "factor": self.factor if same else self.factors,
            "padding": self.padding,
            "f^l": show([a.grid for a in axes]),
            "capacity f^(d*l)": self.capacity,
            "context": show([a.context for a in axes]),
            "valid inputs": "; ".join(dict.fromkeys(
                f"≡ {a.input_residue} (mod {a.grid}), >= {a.min_input_size}" for a in axes)),
            "tile crop": "; ".join(dict.fromkeys(f"{a.output_residue} ({a.crop_front} front)" for a in axes)),
        }
        return out
