"""Proofreading: split one object by re-clustering its embeddings, merge several into one.

Both work on in-memory label images (a napari layer's data) and return a new array; the
caller decides whether to replace the layer. A split looks again at what the network said
about the object's pixels: mean-shift on its embeddings alone with a smaller bandwidth, then
connected pieces. Two nuclei that the global bandwidth merged usually have two embedding
modes; a nucleus that really is one object has one, and then nothing changes (and the caller
is told so).

The work of a split is bounded whatever the object and the bandwidth: a bandwidth far below
the spread of the object's embeddings is refused (it could only shatter the object), the modes
of a very large object are found on a sample of its pixels, and the object is cut into at most
:data:`MAX_FRAGMENTS` connected pieces. Splits of ordinary objects at ordinary bandwidths are
computed exactly as without these bounds.

:class:`EditHistory` undoes edits: it keeps, for each of the last few, the bounding box of the
voxels it changed and their labels before it (not a copy of the whole label image).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from ..util._errors import ShiftSegError
from ..util.region import Region
from ..util.validate import number, whole

__all__ = ["MAX_FRAGMENTS", "MAX_MODE_PIXELS", "MAX_WINDOWS", "EditHistory", "Patch", "merge_objects",
           "split_object"]

# A split's mean-shift costs (seeds x occupied embedding cells x steps), and it finds at most
# a few modes per bandwidth-wide window the embeddings occupy. Measured on the bundled models'
# embeddings of synthetic nuclei at half their bandwidth (the widget's split): one nucleus
# occupies at most ~160 such windows, two merged nuclei ~220 (~450 at a quarter of the
# bandwidth), the whole foreground of a 256 x 256 image (dozens of nuclei) ~1000 and of a
# 32 x 96 x 96 volume ~1700. At 2000 windows a split of a 512 x 512 object took at most 8.5 CPU
# seconds (one thread; the worst of uniform, Gaussian, heavy-tailed, clustered and position-like
# embeddings in 2, 3 and 8 dimensions); a bandwidth that needs more windows is refused.
MAX_WINDOWS = 2000

# Modes of objects larger than this (a 256 x 256 square, a 40^3 cube; nuclei are far smaller)
# are found on a random sample of this many of its pixels, so that mean-shift's cost does not
# grow with the object. Every pixel is still given its nearest mode.
MAX_MODE_PIXELS = 2**16

# Each connected piece costs a few Python-level steps when small pieces are absorbed; a split
# that cuts the object into more fragments than this is noise, not two or three nuclei.
MAX_FRAGMENTS = 10_000

# Windows are counted on a grid; a bandwidth this many times below the embeddings' spread would
# overflow the grid's coordinates and can only shatter the object.
_MAX_CELLS_PER_AXIS = 2**31

# Steps of bisection for the bandwidth suggested instead of one too small: within 5 %.
_BISECTIONS = 4


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShiftSegError(f"labels must hold whole numbers, got data type {labels.dtype}")
    return labels


# --------------------------------------------------------------------------- object ids

def _object_id(value) -> int:
    """``value`` as an object id: a whole number (3, numpy ints, 3.0) above 0, never a bool."""
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()  # numpy scalars as Python numbers (also in the message)
    if isinstance(value, Integral) and not isinstance(value, bool):
        number_ = int(value)
    elif isinstance(value, Real) and not isinstance(value, bool) and float(value).is_integer():
        number_ = int(float(value))
    else:
        raise ShiftSegError(f"object ids must be whole numbers like 4, got {value!r}")
    if number_ <= 0:
        raise ShiftSegError(f"object ids start at 1 (0 is the background), got {value!r}")
    return number_


def _missing(labels: np.ndarray, ids: list[int]) -> list[int]:
    """The ids that label no pixel (ids beyond the labels' data type label none)."""
    info = np.iinfo(labels.dtype)
    fitting = [i for i in ids if info.min <= i <= info.max]
    present = set(np.unique(labels[np.isin(labels, fitting)]).tolist()) if fitting else set()
    return [i for i in ids if i not in present]


def merge_objects(labels, ids) -> tuple[np.ndarray, int]:
    """All objects in ``ids`` become one, keeping the smallest id. Returns (labels, kept id)."""
    labels = _check_labels(labels)
    if isinstance(ids, (str, bytes)) or not np.iterable(ids):
        raise ShiftSegError(f"name the object ids to merge as a list like [4, 9], got {ids!r}")
    ids = sorted({_object_id(i) for i in ids})
    if len(ids) < 2:
        raise ShiftSegError(f"name at least two object ids (> 0) to merge, got {ids}")
    missing = _missing(labels, ids)
    if missing:
        raise ShiftSegError(f"object(s) {missing} are not in the labels")
    out = labels.copy()
    out[np.isin(out, ids[1:])] = ids[0]
    return out, ids[0]


# --------------------------------------------------------------------------- split

def split_object(labels, embeddings, object_id: int, bandwidth: float, min_size: int = 1,
                 seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Split object ``object_id`` by mean-shift on its own embeddings.

    Parameters
    ----------
    labels : array (*spatial) of int
    embeddings : array (E, *spatial)
        The embeddings the labels came from (foreground channel excluded), on the same grid.
    object_id : int
        The object to split: a whole number > 0 (``4``, ``np.int32(4)`` or ``4.0``).
    bandwidth : float
        Mean-shift bandwidth for this object; smaller than the one that merged it. Refused when
        the object's embeddings spread over more than :data:`MAX_WINDOWS` windows this wide.
    min_size : int
        Pieces smaller than this join the piece they touch most (or stay with the object).

    Returns
    -------
    (labels, ids)
        A new label image and the ids of the pieces (the first is ``object_id``); one id if
        the object has a single embedding mode at this bandwidth. The new ids follow the
        largest id in ``labels``; when they do not fit the labels' data type, the image comes
        back in the next wider integer type (uint8 -> uint16, ...).

    Raises
    ------
    ShiftSegError
        For a bad id, bandwidth or grid, an object not in the labels, a bandwidth far too small
        for the object, a split into more than :data:`MAX_FRAGMENTS` fragments, or new ids
        that no integer type holds.
    """
    from scipy import ndimage as ndi

    from .meanshift import assign_to_modes, mean_shift

    labels = _check_labels(labels)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[1:] != labels.shape:
        raise ShiftSegError(f"the embeddings (spatial shape {embeddings.shape[1:]}) must lie on the "
                            f"labels' grid (shape {labels.shape})")
    bandwidth = number(bandwidth, "the bandwidth", 0.0)
    min_size = whole(min_size, "min_size", 0)
    object_id = _object_id(object_id)
    if _missing(labels, [object_id]):
        raise ShiftSegError(f"object {object_id} is not in the labels")
    # Everything below works in the object's bounding box: small objects cost little.
    box = ndi.find_objects((labels == object_id).view(np.uint8))[0]
    mask = labels[box] == object_id
    points = embeddings[(slice(None),) + tuple(box)][:, mask].T
    sample = _mode_sample(points, seed)
    _check_bandwidth(sample, bandwidth, object_id)
    modes = mean_shift(sample, bandwidth, seed=seed)
    clusters = np.zeros(mask.shape, np.int32)
    clusters[mask] = assign_to_modes(points, modes)
    pieces, count = _pieces(clusters, object_id, bandwidth)
    pieces = _absorb_small(pieces, count, min_size, background=labels.size - len(points))
    return _relabel(labels, box, mask, pieces, object_id)


def _mode_sample(points: np.ndarray, seed: int) -> np.ndarray:
    """At most MAX_MODE_PIXELS of the points (all of them, in order, for smaller objects)."""
    if len(points) <= MAX_MODE_PIXELS:
        return points
    pick = np.random.default_rng(seed).choice(len(points), MAX_MODE_PIXELS, replace=False)
    return points[np.sort(pick)]


def _windows(points: np.ndarray, width: float) -> float:
    """How many cells of a grid of spacing ``width`` the points occupy (inf: too many)."""
    cells = np.floor((points - points.min(axis=0)).astype(np.float64) / width)
    if cells.max() >= _MAX_CELLS_PER_AXIS:
        return math.inf
    return len(np.unique(cells.astype(np.int64), axis=0))


def _check_bandwidth(points: np.ndarray, bandwidth: float, object_id: int) -> None:
    """Refuse a bandwidth at which the embeddings fill more than MAX_WINDOWS windows."""
    if _windows(points, bandwidth) <= MAX_WINDOWS:
        return
    raise ShiftSegError(
        f"the bandwidth {bandwidth:g} is too small for object {object_id}: its embeddings "
        f"spread over more than {MAX_WINDOWS} windows of that width, so it could only shatter; "
        f"use a bandwidth of at least {_round_up(_smallest_bandwidth(points, bandwidth))} "
        f"(about half the bandwidth that segmented the image is usual)")


def _smallest_bandwidth(points: np.ndarray, too_small: float) -> float:
    """About the smallest bandwidth above ``too_small`` with at most MAX_WINDOWS windows."""
    spread = float(np.ptp(points, axis=0).max())
    low = max(too_small, spread / _MAX_CELLS_PER_AXIS)
    high = 2 * low
    while _windows(points, high) > MAX_WINDOWS:  # at most ~31 doublings up to the spread
        low, high = high, 2 * high
    for _ in range(_BISECTIONS):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if _windows(points, middle) > MAX_WINDOWS else (low, middle)
    return high


def _round_up(value: float) -> str:
    """``value`` rounded up to two significant digits, as text (0.023, 5.7, 130)."""
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return np.format_float_positional(math.ceil(value / step) * step, precision=2,
                                      fractional=False, trim="-")


def _pieces(clusters: np.ndarray, object_id: int, bandwidth: float) -> tuple[np.ndarray, int]:
    """Connected pieces of equal cluster, numbered by cluster, then by first pixel.

    That is the order of labelling each cluster in turn (the order ``_absorb_small`` and the
    ids of the pieces depend on), in one labelling pass however many clusters there are.
    """
    from skimage.measure import label

    parts = label(clusters, background=0, connectivity=1)
    values, first = np.unique(parts.ravel(), return_index=True)
    inside = values > 0
    values, first = values[inside], first[inside]
    if len(values) > MAX_FRAGMENTS:
        raise ShiftSegError(
            f"at bandwidth {bandwidth:g} object {object_id} falls apart into {len(values)} "
            f"scattered fragments (at most {MAX_FRAGMENTS} are sorted out): its embeddings are "
            f"too noisy at this bandwidth; use a larger one")
    order = np.lexsort((first, clusters.ravel()[first]))
    renumber = np.zeros(int(parts.max()) + 1, np.int32)
    renumber[values[order]] = np.arange(1, len(values) + 1, dtype=np.int32)
    return renumber[parts], len(values)


def _absorb_small(pieces: np.ndarray, count: int, min_size: int, background: int) -> np.ndarray:
    """Pieces below ``min_size`` join the neighbouring piece they share most border with.

    ``background`` is the number of pixels outside the object in the whole image: it takes
    part in the order in which pieces are visited, as it did before the work was cropped to
    the object's bounding box. Each piece is looked at in its own (grown) box only.
    """
    from scipy import ndimage as ndi

    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    sizes[0] = background
    boxes = [None, *ndi.find_objects(pieces)]
    for small in np.argsort(sizes):
        if small == 0 or sizes[small] == 0 or sizes[small] >= min_size:
            continue
        window = pieces[_grown(boxes[small], pieces.shape)]
        own = window == small
        ring = ndi.binary_dilation(own) & ~own & (window > 0)
        if ring.any():
            target = np.bincount(window[ring]).argmax()
            window[own] = target
            sizes[target] += sizes[small]
            sizes[small] = 0
            boxes[target] = _union(boxes[target], boxes[small])
    return pieces


def _grown(box, shape) -> tuple[slice, ...]:
    """``box`` one pixel wider on every side, within ``shape``."""
    return Region.from_slices(box).grow(1, within=Region.whole(shape)).to_slices()


def _union(a, b) -> tuple[slice, ...]:
    return Region.from_slices(a).union(Region.from_slices(b)).to_slices()


def _relabel(labels: np.ndarray, box, mask: np.ndarray, pieces: np.ndarray,
             object_id: int) -> tuple[np.ndarray, list[int]]:
    """The largest piece keeps the object's id (what the user selected stays mostly in place);
    the others, largest first, get the ids after the labels' largest."""
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    ids = np.flatnonzero(sizes)
    ranked = ids[np.argsort(-sizes[ids], kind="stable")]
    next_id = int(labels.max()) + 1
    new_ids = [object_id, *range(next_id, next_id + len(ranked) - 1)]
    out = labels.astype(_dtype_for(labels, new_ids[-1]), copy=True)
    lookup = np.zeros(len(sizes), out.dtype)
    lookup[ranked] = np.array(new_ids, dtype=out.dtype)
    out[box][mask] = lookup[pieces[mask]]
    return out, new_ids


def _dtype_for(labels: np.ndarray, top: int) -> np.dtype:
    """The labels' data type, or the next wider integer type that holds ``top``."""
    if top <= np.iinfo(labels.dtype).max:
        return labels.dtype
    wider = np.promote_types(labels.dtype, np.min_scalar_type(top))
    if wider.kind not in "iu":
        raise ShiftSegError(
            f"the split needs object id {top}, more than any integer label image holds; "
            f"renumber the objects (e.g. consecutively from 1) first")
    return wider


# --------------------------------------------------------------------------- undo

#: Edits an :class:`EditHistory` keeps by default, and the most bytes of previous labels it holds
#: for them (older edits are forgotten first).
UNDO_STEPS = 20
UNDO_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Patch:
    """What one edit replaced: the labels inside ``region`` (a box of slices) before it, and
    the data type of the whole label image before it (a split may have widened it)."""

    region: tuple[slice, ...]
    labels: np.ndarray
    dtype: np.dtype

    def changes(self, labels) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(indices, values) that put this patch back into ``labels``: the voxels of the region
        whose label differs, as whole-image index arrays (napari's ``Labels.data_setitem``)."""
        now = np.asarray(labels)[self.region]
        differs = now != self.labels
        indices = tuple(i + s.start for i, s in zip(np.nonzero(differs), self.region))
        return indices, self.labels[differs]


class EditHistory:
    """Undo for edits of a label image (split, merge): a bounded stack of :class:`Patch`.

    ``record(before, after)`` after each edit; ``undo(labels)`` gives the labels with the last
    recorded edit taken back. Edits made in between (by hand) outside the edit's box are kept;
    inside it, the box comes back as it was before the edit. At most ``steps`` edits and
    ``max_bytes`` of previous labels are kept; an edit whose box alone is larger is not kept,
    and the history is emptied (the older patches would no longer fit what is undone).
    """

    def __init__(self, steps: int = UNDO_STEPS, max_bytes: int = UNDO_BYTES):
        self.steps = whole(steps, "steps", 1)
        self.max_bytes = whole(max_bytes, "max_bytes", 0)
        self._patches: deque[Patch] = deque()

    def __len__(self) -> int:
        return len(self._patches)

    @property
    def nbytes(self) -> int:
        """Bytes of previous labels held."""
        return sum(p.labels.nbytes for p in self._patches)

    def clear(self) -> None:
        self._patches.clear()

    def record(self, before, after) -> Patch | None:
        """Remember what ``after`` (an edit of ``before``, same shape) changed. Returns the
        patch, or None when nothing changed or the edit was too large to keep."""
        before, after = np.asarray(before), np.asarray(after)
        if before.shape != after.shape:
            raise ShiftSegError(f"an edit must keep the labels' shape {before.shape}, got {after.shape}")
        changed = np.nonzero(before != after)
        if changed[0].size == 0:
            return None
        region = tuple(slice(int(i.min()), int(i.max()) + 1) for i in changed)
        patch = Patch(region, before[region].copy(), before.dtype)
        if patch.labels.nbytes > self.max_bytes:
            self.clear()
            return None
        self._patches.append(patch)
        while len(self._patches) > self.steps or self.nbytes > self.max_bytes:
            self._patches.popleft()
        return patch

    def pop(self) -> Patch:
        """The last recorded edit's patch, taken off the stack."""
        if not self._patches:
            raise ShiftSegError("nothing to undo")
        return self._patches.pop()

    def undo(self, labels) -> np.ndarray:
        """A copy of ``labels`` with the last recorded edit taken back, in the labels' data
        type before that edit when its ids fit it again."""
        patch = self.pop()
        out = np.array(labels, dtype=np.promote_types(np.asarray(labels).dtype, patch.dtype), copy=True)
        out[patch.region] = patch.labels
        info = np.iinfo(patch.dtype)
        fits = out.size == 0 or (info.min <= out.min() and out.max() <= info.max)
        return out.astype(patch.dtype, copy=False) if fits else out
