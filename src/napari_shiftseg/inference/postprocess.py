"""Post-processing of instance labels that does not split nuclei, blockwise and exact.

The connected components of :mod:`napari_shiftseg.inference.instances` follow the clusters exactly, so one
nucleus whose embeddings straddle two modes comes out as two touching fragments, and the rim of
a nucleus often forms small slivers of its own. Three optional steps repair this, in this order:

1. **merge** (``merge_distance``): every pair of *touching* objects whose mean embeddings (the
   embedding channels only, never the foreground logit) are closer than ``merge_distance`` is
   joined (union-find over all such pairs at once, i.e. single linkage: a chain of close
   fragments becomes one object even if its two ends are further apart). The means are those of
   the connected components, before any merge. A natural value is the push margin ``2·delta_d``
   of the loss or the mean-shift bandwidth: fragments of one trained cluster lie within it.
2. **absorb** (``absorb_small`` with ``min_size``): an object (after step 1) smaller than
   ``min_size`` voxels that touches other objects joins the neighbour it shares the most
   face contacts with (ties: the neighbour whose first voxel in C order comes first). This runs
   in rounds (all small objects choose at once, then sizes and contacts are recomputed) until no
   small object touches another; small objects that touch nothing are dropped as before.
3. **fill holes** (``fill_holes``): a background component (voxels of label 0 after steps 1-2
   and the size filter, face-connected over the whole volume) that does not touch the volume
   border and whose only face-neighbouring object is one id takes that id. For a single object
   this is ``scipy.ndimage.binary_fill_holes``.

**Exact across chunks.** Everything is decided from global tables with one row per object
(or per background component), built from per-block partial results and the 2-voxel face slabs
that :mod:`~napari_shiftseg.inference.instances` already uses, so the result does not depend on the
chunking. Two details make that hold bit for bit rather than up to rounding: embedding sums are
accumulated in fixed point (each value rounded to a multiple of 2^-16 and clipped to
+-2^15, then summed as integers, which is associative; means are formed once from the global
totals), and every tie is broken by a chunk-independent key (the C-order index of an object's
first voxel). Objects are limited to 2^32 voxels by the integer sums.

This module holds the numpy pieces (per block, per face slab, per table);
:mod:`napari_shiftseg.inference.instances` wires them into its lazy and zarr-staged passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import cast

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as _sk_label

from ..util._errors import ShiftSegError

__all__ = ["PostProcess", "post_options"]

# Fixed point of the embedding sums: 2^-16 embedding units, values clipped to +-2^15.
_SCALE_BITS = 16
_CLIP = float(2**15)
# bincount sums in float64 are exact below 2^53: split each value into a low part < 2^20 and a
# high part, so a block of up to 2^33 voxels sums exactly.
_LOW_BITS = 20
_NO_VOXEL = np.iinfo(np.int64).max


@dataclass(frozen=True)
class PostProcess:
    """Validated post-processing settings (see the module docstring)."""

    merge_distance: float | None = None
    absorb_small: bool = False
    fill_holes: bool = False
    min_size: int = 0

    @property
    def absorbs(self) -> bool:
        return self.absorb_small and self.min_size > 1

    @property
    def regroups(self) -> bool:
        """Whether objects can join after the components are found (merge or absorb)."""
        return self.merge_distance is not None or self.absorbs

    @property
    def active(self) -> bool:
        return self.regroups or self.fill_holes


def post_options(merge_distance=None, absorb_small=False, fill_holes=False, min_size=0) -> PostProcess:
    """Check the user's settings; ``merge_distance`` None or 0 switches merging off."""
    if merge_distance is not None:
        ok = (isinstance(merge_distance, Real) and not isinstance(merge_distance, bool)
              and math.isfinite(merge_distance) and cast(float, merge_distance) >= 0)
        if not ok:
            raise ShiftSegError(
                f"merge_distance must be None (off) or a number >= 0 in embedding units, "
                f"got {merge_distance!r}")
        merge_distance = float(merge_distance) or None
    for name, value in (("absorb_small", absorb_small), ("fill_holes", fill_holes)):
        if not isinstance(value, (bool, np.bool_)):
            raise ShiftSegError(f"{name} must be True or False, got {value!r}")
    return PostProcess(merge_distance, bool(absorb_small), bool(fill_holes), int(min_size))


# --------------------------------------------------------------------------- per block


def _quantize(values):
    """float -> int64 multiples of 2^-16 (NaN -> 0, clipped to +-2^15): exact to sum."""
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=_CLIP, neginf=-_CLIP)
    return np.rint(np.clip(values, -_CLIP, _CLIP) * 2.0**_SCALE_BITS).astype(np.int64)


def _exact_sums(labels, values, n):
    """Integer sums of int64 ``values`` per label 0..n (bincount, split so it stays exact)."""
    low = values & ((1 << _LOW_BITS) - 1)
    high = values >> _LOW_BITS
    sum_low = np.rint(np.bincount(labels, weights=low, minlength=n)).astype(np.int64)
    sum_high = np.rint(np.bincount(labels, weights=high, minlength=n)).astype(np.int64)
    return (sum_high << _LOW_BITS) + sum_low


def embedding_sums(local, n, emb_block, foreground: bool):
    """(n+1, E) int64 fixed-point embedding sums per local label (row 0: background)."""
    flat = np.asarray(emb_block).reshape(emb_block.shape[0], -1)
    if foreground:
        flat = flat[:-1]
    labels = np.asarray(local).ravel()
    sums = np.zeros((n + 1, flat.shape[0]), np.int64)
    for channel in range(flat.shape[0]):
        sums[:, channel] = _exact_sums(labels, _quantize(flat[channel]), n + 1)
    return sums


def first_voxels(local, n, origin, shape):
    """C-order index in the whole volume of the first voxel of every local label (row 0 unused).

    Inside a box, C order of the box and of the volume agree, so the first voxel in the block is
    the first in the volume: a key that does not depend on the chunking."""
    local = np.asarray(local)
    flat = local.ravel()
    where = np.flatnonzero(flat)
    first_local = np.zeros(n + 1, np.int64)
    # Reverse order: with repeated indices the last assignment wins, i.e. the first voxel.
    first_local[flat[where[::-1]]] = where[::-1]
    first = np.full(n + 1, _NO_VOXEL, np.int64)
    present = np.zeros(n + 1, bool)
    present[flat[where]] = True
    present[0] = False
    coords = np.unravel_index(first_local[present], local.shape)
    first[present] = np.ravel_multi_index(
        tuple(c + o for c, o in zip(coords, origin)), tuple(shape))
    return first


def _count_pairs(a, b):
    """(k, 3) int64 rows (low id, high id, number of occurrences) of the id pairs a[i]-b[i]."""
    if a.size == 0:
        return np.zeros((0, 3), np.int64)
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    return np.concatenate([unique, counts[:, None].astype(np.int64)], axis=1)


def _neighbour_pairs(labels):
    """Values of every face-adjacent voxel pair of an array, one (a, b) array pair per axis."""
    labels = np.asarray(labels)
    for axis in range(labels.ndim):
        n = labels.shape[axis]
        if n < 2:
            continue
        yield (np.take(labels, np.arange(n - 1), axis=axis).ravel(),
               np.take(labels, np.arange(1, n), axis=axis).ravel())


def block_contacts(local):
    """(k, 3) (label a, label b, contacts) of face-adjacent voxels with different nonzero labels.

    Inside one block two different labels that touch are always of different clusters."""
    a_all, b_all = [], []
    for a, b in _neighbour_pairs(local):
        touching = (a > 0) & (b > 0) & (a != b)
        a_all.append(a[touching])
        b_all.append(b[touching])
    if not a_all:
        return np.zeros((0, 3), np.int64)
    return _count_pairs(np.concatenate(a_all), np.concatenate(b_all))


def face_contacts(gids, cluster_table, axis: int, core):
    """Contacts across the face of a 2-voxel slab of global ids, counted in ``core`` only.

    Pairs of the same cluster across the face are one object (linked by the face edges), not a
    contact. ``core`` leaves out the extra voxel a slab piece reaches into the next chunk along
    the other axes, so that every voxel pair is counted exactly once over all pieces."""
    gids = np.asarray(gids)[core]
    a = np.take(gids, 0, axis=axis).ravel()
    b = np.take(gids, 1, axis=axis).ravel()
    touching = (a > 0) & (b > 0) & (a != b)
    a, b = a[touching], b[touching]
    other = cluster_table[a] != cluster_table[b]
    return _count_pairs(a[other], b[other])


def block_stats(local, n, emb_block, foreground, origin, shape, options: PostProcess):
    """Per-block tables for regrouping: (embedding sums or None, first voxels or None, contacts)."""
    if not options.regroups:
        return None
    sums = embedding_sums(local, n, emb_block, foreground) if options.merge_distance else None
    first = first_voxels(local, n, origin, shape) if options.absorbs else None
    return sums, first, block_contacts(local)


def join_stats(stats, offsets):
    """Per-block stats -> global tables indexed by global id (row 0: background)."""
    if stats[0] is None:
        return None
    sums = first = None
    if stats[0][0] is not None:
        sums = np.concatenate([np.zeros((1, stats[0][0].shape[1]), np.int64)]
                              + [s[0][1:] for s in stats])
    if stats[0][1] is not None:
        first = np.concatenate([np.full(1, _NO_VOXEL, np.int64)] + [s[1][1:] for s in stats])
    contacts = [s[2] + np.array([offset, offset, 0], np.int64) for s, offset in zip(stats, offsets)]
    return sums, first, contacts


# --------------------------------------------------------------------------- object tables


def _union(n, pairs):
    """Component index of nodes 0..n-1 joined by the (k, 2) ``pairs``."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(pairs.shape[0], np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _object_contacts(group, contacts):
    """(k, 3) contacts between groups (low, high, summed contacts), groups that differ only."""
    a, b = group[contacts[:, 0]], group[contacts[:, 1]]
    keep = a != b
    a, b, count = a[keep], b[keep], contacts[keep, 2]
    if a.size == 0:
        return np.zeros((0, 3), np.int64)
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    total = np.bincount(inverse.ravel(), weights=count, minlength=unique.shape[0])
    return np.concatenate([unique, np.rint(total).astype(np.int64)[:, None]], axis=1)


def _merge_close(n_objects, size, sums, contacts, distance):
    """Group of every object after joining touching objects with close mean embeddings."""
    means = sums.astype(np.float64) / (np.maximum(size, 1)[:, None] * 2.0**_SCALE_BITS)
    a, b = contacts[:, 0], contacts[:, 1]
    squared = np.zeros(a.shape[0], np.float64)
    for channel in range(means.shape[1]):  # fixed order: the same bits whatever the chunking
        squared += (means[a, channel] - means[b, channel]) ** 2
    close = squared < distance * distance
    return _union(n_objects, np.stack([a[close], b[close]], axis=1))


def _absorb_small(group, size, first, contacts, min_size):
    """Join every small group that touches another to its most-touched neighbour, in rounds."""
    while True:
        n = int(group.max()) + 1
        gsize = np.bincount(group, weights=size, minlength=n)
        gfirst = np.full(n, _NO_VOXEL, np.int64)
        np.minimum.at(gfirst, group, first)
        pairs = _object_contacts(group, contacts)
        source = np.concatenate([pairs[:, 0], pairs[:, 1]])
        target = np.concatenate([pairs[:, 1], pairs[:, 0]])
        count = np.concatenate([pairs[:, 2], pairs[:, 2]])
        small = gsize[source] < min_size
        if not small.any():
            return group
        source, target, count = source[small], target[small], count[small]
        order = np.lexsort((gfirst[target], -count, source))
        source, target = source[order], target[order]
        best = np.r_[True, source[1:] != source[:-1]]
        joined = _union(n, np.stack([source[best], target[best]], axis=1))
        group = joined[group]


def regroup_objects(component, sizes, stats, options: PostProcess):
    """Component per global id -> group per global id after merging and absorbing.

    ``component`` is the connected component (object) of every global id, ``sizes`` the voxel
    count per global id and ``stats`` the joined tables of :func:`join_stats`."""
    sums, first, contacts = stats
    contacts = np.concatenate(contacts) if len(contacts) else np.zeros((0, 3), np.int64)
    n_objects = int(component.max()) + 1
    size = np.rint(np.bincount(component, weights=sizes, minlength=n_objects))
    object_contacts = _object_contacts(component, contacts)
    group = np.arange(n_objects)
    if options.merge_distance is not None:
        object_sums = np.zeros((n_objects, sums.shape[1]), np.int64)
        np.add.at(object_sums, component, sums)
        group = _merge_close(n_objects, size, object_sums, object_contacts, options.merge_distance)
    if options.absorbs:
        object_first = np.full(n_objects, _NO_VOXEL, np.int64)
        np.minimum.at(object_first, component, first)
        group = _absorb_small(group, size, object_first, object_contacts, options.min_size)
    return group[component]


# --------------------------------------------------------------------------- holes


def background_ids(final):
    """Final labels of a block with its background labelled -1..-m (face connectivity), int32."""
    final = np.asarray(final)
    background = final == 0
    local = _sk_label(background, background=0, connectivity=1)
    return np.where(background, -local, final).astype(np.int32)


def background_tables(combined, border):
    """Tables of a block from :func:`background_ids`.

    ``border[axis]`` is (low face on the volume border, high face on the volume border).

    Returns
    -------
    (m, touches_border bool (m+1,), neighbours (k, 2) int64 (background id, object label))
    """
    combined = np.asarray(combined)
    m = int(max(-combined.min(initial=0), 0))
    touches = np.zeros(m + 1, bool)
    for axis, ends in enumerate(border):
        for end, on_border in zip((0, -1), ends):
            if on_border:
                face = np.take(combined, end, axis=axis)
                touches[-face[face < 0]] = True
    return m, touches, _background_neighbours(_neighbour_pairs(combined))


def _background_neighbours(pairs):
    """(k, 2) unique (background id, object label) of face pairs; background ids are negated."""
    found = []
    for a, b in pairs:
        for bg, obj in ((a, b), (b, a)):
            hit = (bg < 0) & (obj > 0)
            found.append(np.stack([-bg[hit], obj[hit]], axis=1).astype(np.int64))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def to_global_background(combined, offset):
    """Negative local background ids -> negative global ones (objects unchanged)."""
    combined = np.asarray(combined).astype(np.int64)
    return np.where(combined < 0, combined - offset, combined)


def background_face(signed, axis: int):
    """Across the face of a 2-voxel slab (global background ids negated): (edges, neighbours)."""
    a = np.take(signed, 0, axis=axis).ravel()
    b = np.take(signed, 1, axis=axis).ravel()
    both = (a < 0) & (b < 0) & (a != b)
    edges = np.stack([-a[both], -b[both]], axis=1).astype(np.int64)
    return edges, _background_neighbours([(a, b)])


def fill_table(n_background, edges, touches, neighbours):
    """Global background id -> object label that fills it (0: stays background).

    ``n_background`` counts global ids 1..n (0 unused), ``touches`` (n+1,) marks ids on the
    volume border, ``neighbours`` (k, 2) lists (background id, object) face contacts."""
    n = n_background + 1
    edges = np.concatenate(edges) if len(edges) else np.zeros((0, 2), np.int64)
    component = _union(n, edges)
    border = np.zeros(component.max() + 1, bool)
    border[component[touches]] = True
    neighbours = np.concatenate(neighbours) if len(neighbours) else np.zeros((0, 2), np.int64)
    pairs = np.unique(np.stack([component[neighbours[:, 0]], neighbours[:, 1]], axis=1), axis=0)
    n_neighbours = np.bincount(pairs[:, 0], minlength=border.size)
    fill = np.zeros(border.size, np.int32)
    single = n_neighbours[pairs[:, 0]] == 1
    fill[pairs[single, 0]] = pairs[single, 1]
    fill[border] = 0
    table = fill[component]
    table[0] = 0
    return table


def apply_fill(combined, table, offset):
    """Final labels of a block: background ids -> their fill label (0 or the enclosing object)."""
    combined = np.asarray(combined)
    out = combined.astype(np.int32, copy=True)
    hole = combined < 0
    out[hole] = table[offset - combined[hole].astype(np.int64)]
    return out


# --------------------------------------------------------------------------- holes, lazily


def _block_border(block_info):
    info = block_info[0]
    return tuple((i == 0, i == n - 1) for i, n in zip(info["chunk-location"], info["num-chunks"]))


def _one(value, ndim):
    out = np.empty((1,) * ndim, object)
    out[(0,) * ndim] = value
    return out


def _background_tables_block(combined, block_info=None):
    return _one(background_tables(combined, _block_border(block_info)), combined.ndim)


def _background_faces_block(extended, block_info=None):
    """Pairs across the low faces of a block padded by one voxel from its neighbours.

    Per low face that has a neighbour: (axis, background-background pairs (neighbour's id, own
    id), (neighbour's background id, own object), (own background id, neighbour's object)),
    all in local ids of their blocks."""
    location = block_info[0]["chunk-location"]
    ndim = extended.ndim
    core = tuple(slice(int(i > 0), int(i > 0) + n)
                 for i, n in zip(location, _core_shape(extended.shape, block_info)))
    faces = []
    for axis in range(ndim):
        if location[axis] == 0:
            continue
        ghost = list(core)
        ghost[axis] = slice(0, 1)
        own = list(core)
        own[axis] = slice(1, 2)
        a, b = extended[tuple(ghost)].ravel(), extended[tuple(own)].ravel()
        both = (a < 0) & (b < 0)
        edges = np.stack([-a[both], -b[both]], axis=1).astype(np.int64)
        ghost_bg, own_bg = (a < 0) & (b > 0), (b < 0) & (a > 0)
        faces.append((axis, edges, np.stack([-a[ghost_bg], b[ghost_bg]], axis=1).astype(np.int64),
                      np.stack([-b[own_bg], a[own_bg]], axis=1).astype(np.int64)))
    return _one(faces, ndim)


def _core_shape(shape, block_info):
    """Shape of a block without the one-voxel padding of map_overlap (none at the border)."""
    info = block_info[0]
    return tuple(s - int(i > 0) - int(i < n - 1)
                 for s, i, n in zip(shape, info["chunk-location"], info["num-chunks"]))


def _lazy_fill_table(tables, faces):
    """(fill table, background id offset per block) from the per-block results."""
    counts = np.array([t[0] for t in tables.ravel()], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).reshape(tables.shape)
    touches = np.concatenate([np.zeros(1, bool)] + [t[1][1:] for t in tables.ravel()])
    neighbours = [t[2] + np.array([o, 0], np.int64) for t, o in zip(tables.ravel(), offsets.ravel())]
    edges = []
    for index in np.ndindex(tables.shape):
        for axis, pairs, ghost_nb, own_nb in faces[index]:
            before = list(index)
            before[axis] -= 1
            mine, theirs = offsets[index], offsets[tuple(before)]
            edges.append(pairs + np.array([theirs, mine], np.int64))
            neighbours.append(ghost_nb + np.array([theirs, 0], np.int64))
            neighbours.append(own_nb + np.array([mine, 0], np.int64))
    return fill_table(int(counts.sum()), edges, touches, neighbours), offsets


def _fill_block(combined, fill, block_info=None):
    table, offsets = fill
    return apply_fill(combined, table, offsets[tuple(block_info[0]["chunk-location"])])


def lazy_fill_holes(labels):
    """Fill holes of a lazy (dask) label array, exactly across its chunks (see module docstring).

    One task per block and stage (map_blocks / map_overlap), the small tables in one task."""
    import dask
    import dask.array as da

    ndim = labels.ndim
    combined = labels.map_blocks(background_ids, dtype=np.int32)
    tables = combined.map_blocks(_background_tables_block, chunks=(1,) * ndim, dtype=object)
    faces = da.map_overlap(_background_faces_block, combined, depth=1, boundary="none",
                           trim=False, chunks=(1,) * ndim, dtype=object)
    fill = dask.delayed(_lazy_fill_table, pure=True)(tables, faces)
    return combined.map_blocks(_fill_block, fill, dtype=np.int32)
