"""Embeddings -> instance labels, block by block, for volumes of any size.

Three steps, the order of THEORY.md ("Instances"):

1. :func:`cluster_embeddings` - mean-shift on a random subsample of the foreground voxels of
   the **whole** image (never one tile alone: a tile does not see all clusters). The subsample
   is drawn chunk by chunk (each chunk contributes a number of foreground voxels proportional to
   its size), so a dask or zarr volume is streamed once and never held in memory.
2. every foreground voxel gets the id of its nearest mode (its *cluster*), block by block.
3. connected components **inside each cluster** over the whole volume, because far-apart
   objects can share an embedding (the network's capacity is limited, THEORY.md result 2).
   As in dask-image's ``label``:

   a. label each block on its own (``skimage.measure.label`` on the cluster ids, so only
      voxels of the same cluster connect) and make the ids unique with per-block offsets;
   b. find the equivalences on the chunk faces: a 2-voxel slab across every face, labelled
      again by cluster id, links the ids that touch across the face (written to zarr with face
      connectivity, the slab is put together from the two blocks' outer planes, so each block
      is read back once, not twice per face);
   c. union-find on that small table (``scipy.sparse.csgraph.connected_components``), drop
      objects smaller than ``min_size`` voxels (sizes come from the per-block counts of step a,
      so no second pass over the data), number the rest 1..M in the order of their first
      block, and relabel block by block.

4. optional post-processing against over-splitting (:mod:`napari_shiftseg.inference.postprocess`): merge
   touching objects with close mean embeddings, absorb small fragments into the neighbour they
   touch most, fill holes. It rides on the same passes (per-block partial tables, the face slabs,
   one small global table per object) plus, for hole filling, one more labelling of the
   background; the result stays independent of the chunking.

Two entry points share these steps: :func:`label_instances` returns a lazy dask array (the graph
keeps the per-block labels, 4 bytes per voxel, until the relabel table is known: fine for
anything that fits in memory), and :func:`write_instances` stages through a zarr array and keeps
memory flat for volumes of any size (used by :mod:`napari_shiftseg.inference.segment`).

**Foreground rule.** With a foreground head (the default; the logit is the last channel of the
embeddings), a voxel is foreground where ``sigmoid(logit) > fg_threshold``; background voxels get
label 0 and take no part in clustering. Without one (``foreground=False``, the reference's
"background is just another instance"), every voxel is clustered and the cluster with the most
voxels in the subsample is taken to be the background and dropped (label 0). This assumes the
background is the largest single "instance", true for the sparse objects of microscopy; with a
foreground head nothing is assumed.

**Re-clustering reuses embeddings** only if they are not recomputed: pass the *same* persisted
array (``emb = predict_embeddings(...).persist()``) or, for big volumes, the zarr array written by
:func:`~napari_shiftseg.inference.segment.segment_to_zarr` (``da.from_zarr(group["embeddings"])`` or
:func:`~napari_shiftseg.inference.segment.recluster`). A plain lazy prediction graph would run the network
again on every call (and twice within one: once to cluster, once to label).
"""

from __future__ import annotations

import math
from itertools import product
from numbers import Integral
from typing import cast

import dask
import dask.array as da
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as _sk_label

from ..util._errors import ShiftSegError
from ..util.region import Region
from ..util.validate import whole
from . import postprocess as _post

# Steps 1-2 live in clustering.py; their names stay importable from here.
from .clustering import (
    DEFAULT_BANDWIDTH,
    DEFAULT_MAX_POINTS,
    Clustering,
    _as_dask,
    _assign_block,
    _embeddings,
    _logit,
    assign_clusters,
    cluster_embeddings,
    sample_foreground,
)

__all__ = [
    "Clustering",
    "DEFAULT_BANDWIDTH",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_MIN_SIZE",
    "assign_clusters",
    "cluster_embeddings",
    "label_clusters",
    "label_instances",
    "sample_foreground",
    "segment_instances",
    "write_instances",
]

# Objects smaller than this many voxels are dropped by the segmentation job and the CLI
# (label_instances itself keeps everything unless asked).
DEFAULT_MIN_SIZE = 10

# --------------------------------------------------------------------------- step 3: components


def _check_connectivity(connectivity, ndim: int) -> int:
    if (isinstance(connectivity, bool) or not isinstance(connectivity, Integral)
            or not 1 <= cast(int, connectivity) <= ndim):
        raise ShiftSegError(
            f"connectivity must be 1 (faces) to {ndim} (all neighbours) for {ndim}D images, "
            f"got {connectivity!r}"
        )
    return int(connectivity)


def _label_block(clusters, connectivity: int, min_size: int = 0):
    """Step a for one block: (local labels 1..n int32, voxel count per label, cluster of label).

    Components smaller than ``min_size`` that touch no face of the block can never grow by
    merging with a neighbour block, so they are dropped here already: the global tables then
    hold only objects and face fragments, not every speck of noise.
    """
    clusters = np.asarray(clusters)
    local, n = _sk_label(clusters, background=0, connectivity=connectivity, return_num=True)
    local = local.astype(np.int32, copy=False)
    sizes = np.bincount(local.ravel(), minlength=n + 1).astype(np.int64)
    if min_size > 1 and n:
        keep = sizes >= min_size
        for axis in range(local.ndim):
            for end in (0, -1):
                keep[np.take(local, end, axis=axis)] = True
        keep[0] = True
        if not keep.all():
            new = np.cumsum(keep, dtype=np.int64) - 1  # kept labels stay in order, 0 stays 0
            new[~keep] = 0
            local = new.astype(np.int32)[local]
            sizes = sizes[keep]
    cluster_of = np.zeros(sizes.shape[0], np.int32)
    cluster_of[local.ravel()] = clusters.ravel()
    cluster_of[0] = 0
    return local, sizes, cluster_of


def _face_pieces(shape, chunks, connectivity: int):
    """2-voxel slabs across every chunk face, split along the other axes by their chunks.

    With connectivity > 1 a voxel also touches diagonal neighbours across the face, so each
    piece reaches one voxel into the next chunk along the other axes; then every pair of
    neighbours across a face lies together in at least one piece.
    """
    for _, piece, _ in _face_pieces_with_core(shape, chunks, connectivity):
        yield piece


def _face_pieces_with_core(shape, chunks, connectivity: int):
    """(face axis, piece, core) of every slab piece of :func:`_face_pieces`.

    ``core`` (slices relative to the piece) leaves out the voxel a piece reaches into the next
    chunk along the other axes: the face-adjacent pairs across the face inside the cores are
    every such pair exactly once (post-processing counts them).
    """
    bounds = [np.cumsum((0,) + tuple(c)) for c in chunks]
    extra = 1 if connectivity > 1 else 0
    for axis in range(len(shape)):
        for boundary in bounds[axis][1:-1]:
            others = []
            for other in range(len(shape)):
                if other == axis:
                    others.append([(slice(int(boundary) - 1, int(boundary) + 1), slice(0, 2))])
                    continue
                edges = bounds[other]
                others.append([(slice(int(a), int(min(b + extra, shape[other]))),
                                slice(0, int(b - a))) for a, b in zip(edges[:-1], edges[1:])])
            for combo in product(*others):
                yield axis, tuple(c[0] for c in combo), tuple(c[1] for c in combo)


def _face_edges(gids, cluster_table, connectivity: int):
    """Pairs of global ids that touch (same cluster) inside one face slab."""
    gids = np.asarray(gids)
    clusters = cluster_table[gids]
    slab = _sk_label(clusters, background=0, connectivity=connectivity).ravel()
    gids = gids.ravel()
    fg = slab > 0
    pairs = np.unique(np.stack([slab[fg], gids[fg]], axis=1), axis=0)
    if pairs.shape[0] < 2:
        return np.zeros((0, 2), np.int64)
    # Link every id to the first id of its slab component (pairs are sorted by component).
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    starts = np.flatnonzero(first)
    root = pairs[starts[np.cumsum(first) - 1], 1]
    keep = root != pairs[:, 1]
    return np.stack([root[keep], pairs[keep, 1]], axis=1).astype(np.int64)


def _piece_blocks(piece, chunks):
    """(block index, slices inside the block, slices inside the piece) of the blocks a piece spans."""
    bounds = [np.cumsum((0,) + tuple(c)) for c in chunks]
    ranges = []
    for s, edges in zip(piece, bounds):
        first = int(np.searchsorted(edges, s.start, side="right")) - 1
        last = int(np.searchsorted(edges, s.stop - 1, side="right")) - 1
        ranges.append(range(first, last + 1))
    whole = Region.from_slices(piece)
    for index in product(*ranges):
        block = Region(tuple(int(edges[i]) for i, edges in zip(index, bounds)),
                       tuple(int(edges[i + 1] - edges[i]) for i, edges in zip(index, bounds)))
        common = whole.intersect(block)
        yield index, common.relative_to(block).to_slices(), common.relative_to(whole).to_slices()


def _piece_edges(shape, spans, offsets, cluster_table, connectivity, contacts=None):
    """Face edges of one slab piece assembled from the in-memory block labels it spans.

    With ``contacts=(axis, core)`` also the contacts across the face: (edges, contacts).
    """
    gids = np.zeros(shape, np.int64)
    for local, b, inner, outer in spans:
        gids[outer] = _to_gids(local[inner], offsets[b])
    return _slab_tables(gids, cluster_table, connectivity, contacts)


def _slab_tables(gids, cluster_table, connectivity, contacts):
    edges = _face_edges(gids, cluster_table, connectivity)
    if contacts is None:
        return edges
    return edges, _post.face_contacts(gids, cluster_table, *contacts)


def _offsets(counts):
    """First global id minus one of every block: block b's label i becomes offsets[b] + i."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _relabel_table(sizes, edges, min_size: int, stats=None, options=None):
    """Global id -> final label (int32, 0 for background and dropped objects), and the count.

    With ``stats`` (from :func:`postprocess.join_stats`) the objects are regrouped (merged,
    small ones absorbed) before the size filter and the numbering.
    """
    n = sizes.shape[0]  # global ids 0..n-1, 0 is background
    edges = np.concatenate(edges) if len(edges) else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(edges.shape[0], np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    if stats is not None:
        component = _post.regroup_objects(component, sizes, stats, options)
    object_size = np.bincount(component, weights=sizes)
    # Number objects in the order of their lowest global id (i.e. of their first block).
    firsts, first_index = np.unique(component[1:], return_index=True)
    order = firsts[np.argsort(first_index, kind="stable")]
    kept = order[object_size[order] >= max(min_size, 1)]
    if kept.size >= np.iinfo(np.int32).max:
        raise ShiftSegError(f"{kept.size} objects do not fit the int32 label image")
    new = np.zeros(component.max() + 1, np.int32)
    new[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    table = new[component]
    table[0] = 0
    return table, int(kept.size)


def _counts(sizes):
    return np.array([s.shape[0] - 1 for s in sizes], np.int64)


def _join_tables(tables):
    """Per-block tables indexed by local label -> one table indexed by global id (0 first)."""
    return np.concatenate([np.zeros(1, tables[0].dtype if tables else np.int64)]
                          + [t[1:] for t in tables])


def _to_gids(local, offset):
    local = np.asarray(local)
    return np.where(local > 0, local.astype(np.int64) + offset, 0)


def _apply_table(local, table, offset):
    local = np.asarray(local)
    gids = _to_gids(local, offset)
    return table[gids]


_POST_DOC = """
    merge_distance : float or None
        Join touching objects whose mean embeddings (embedding channels only) are closer than
        this, in embedding units (e.g. the bandwidth, or the push margin ``2·delta_d``). None or
        0: off. See :mod:`napari_shiftseg.inference.postprocess`.
    absorb_small : bool
        Objects smaller than ``min_size`` that touch other objects join the neighbour they touch
        most instead of being dropped (isolated ones are still dropped). Off by default only so
        that existing settings keep giving the same labels; turn it on (with
        ``merge_distance``) for nuclei, where small pieces are rims of a nucleus, not noise.
    fill_holes : bool
        Background regions enclosed by one object (not touching the volume border, no other
        object next to them) take that object's id."""


def _origins(chunks):
    return [np.cumsum((0,) + tuple(c))[:-1] for c in chunks]


def _block_origin(origins, index):
    return tuple(int(origins[axis][i]) for axis, i in enumerate(index))


def _block_border(grid, index):
    """Per axis: whether the block's low and high faces lie on the volume border."""
    return tuple((i == 0, i == n - 1) for i, n in zip(index, grid))


def _label_block_post(clusters, emb_block, connectivity, min_size, options, origin, shape,
                      foreground):
    """:func:`_label_block` plus the per-block tables of post-processing (or None)."""
    # Regrouping can save a small component inside a block: no early size filter then.
    local, sizes, cluster_of = _label_block(clusters, connectivity,
                                            0 if options.regroups else min_size)
    stats = _post.block_stats(local, sizes.shape[0] - 1, emb_block, foreground, origin, shape,
                              options)
    return local, sizes, cluster_of, stats


def _fill_table(counts, touches, neighbours, offsets, faces):
    """Global fill table from the per-block background tables and the face results."""
    touches = np.concatenate([np.zeros(1, bool)] + [t[1:] for t in touches])
    neighbours = [nb + np.array([offset, 0], np.int64) for nb, offset in zip(neighbours, offsets)]
    edges = [f[0] for f in faces]
    neighbours += [f[1] for f in faces]
    return _post.fill_table(int(np.sum(counts)), edges, touches, neighbours)


def _label_graph(clusters, emb, foreground, min_size, connectivity, options) -> da.Array:
    """The lazy labelling of :func:`label_clusters`, with optional post-processing."""
    blocks = clusters.to_delayed()
    grid = blocks.shape
    order = list(np.ndindex(grid))
    origins = _origins(clusters.chunks)
    emb_blocks = emb.to_delayed() if emb is not None else None
    label = dask.delayed(_label_block_post, pure=True, nout=4)
    parts = {index: label(blocks[index], emb_blocks[(0,) + index] if emb_blocks is not None else None,
                          connectivity, min_size, options, _block_origin(origins, index),
                          clusters.shape, foreground)
             for index in order}

    # a. per-block labels, made unique by offsets from the per-block counts
    counts = dask.delayed(_counts, pure=True)([parts[i][1] for i in order])
    offsets = dask.delayed(_offsets, pure=True)(counts)
    sizes = dask.delayed(_join_tables, pure=True)([parts[i][1] for i in order])
    cluster_table = dask.delayed(_join_tables, pure=True)([parts[i][2] for i in order])

    # b. equivalences (and contacts) across chunk faces, one task per slab piece
    flat_index = {index: b for b, index in enumerate(order)}
    faces = []
    for axis, piece, core in _face_pieces_with_core(clusters.shape, clusters.chunks, connectivity):
        spans = list(_piece_blocks(piece, clusters.chunks))
        faces.append(dask.delayed(_piece_edges, pure=True)(
            tuple(s.stop - s.start for s in piece),
            [(parts[index][0], flat_index[index], inner, outer) for index, inner, outer in spans],
            offsets, cluster_table, connectivity, (axis, core) if options.regroups else None))

    # c. union-find (+ regrouping), size filter, relabel block by block
    if options.regroups:
        stats = dask.delayed(_post.join_stats, pure=True)([parts[i][3] for i in order], offsets)
        stats = dask.delayed(_with_face_contacts, pure=True)(stats, [f[1] for f in faces])
        edges = [f[0] for f in faces]
    else:
        stats, edges = None, faces
    table = dask.delayed(_relabel_table, pure=True, nout=2)(sizes, edges, min_size, stats,
                                                            options)[0]
    out = np.empty(grid, dtype=object)
    for b, index in enumerate(order):
        shape = tuple(clusters.chunks[axis][i] for axis, i in enumerate(index))
        final = dask.delayed(_apply_table, pure=True)(parts[index][0], table, offsets[b])
        out[index] = da.from_delayed(final, shape, dtype=np.int32)
    labels = da.block(out.tolist())
    return _post.lazy_fill_holes(labels) if options.fill_holes else labels


def _with_face_contacts(stats, face_contacts):
    sums, first, contacts = stats
    return sums, first, list(contacts) + list(face_contacts)


def label_clusters(clusters, min_size: int = 0, connectivity: int = 1, *,
                   absorb_small: bool = False, fill_holes: bool = False) -> da.Array:
    """Connected components inside each cluster, over the whole (lazy) volume.

    Parameters
    ----------
    clusters : numpy, dask or zarr integer array
        Cluster id per voxel (0 = background), e.g. from :func:`assign_clusters`.
    min_size : int
        Objects with fewer voxels are removed (set to 0).
    connectivity : int
        1 connects face neighbours only; ``ndim`` connects all neighbours.
    absorb_small, fill_holes : bool
        As for :func:`label_instances` (merging needs the embeddings: use that).

    Returns
    -------
    dask.array.Array
        int32 labels 1..M (consecutive), chunked like ``clusters``. Equal to labelling the
        whole array at once (``skimage.measure.label`` on the cluster ids), up to renumbering.
    """
    clusters = _as_dask(clusters, "clusters")
    if clusters.dtype.kind not in "iu":
        raise ShiftSegError(f"cluster ids must be integers, got dtype {clusters.dtype}")
    min_size = whole(min_size, "min_size", 0)
    connectivity = _check_connectivity(connectivity, clusters.ndim)
    options = _post.post_options(None, absorb_small, fill_holes, min_size)
    return _label_graph(clusters, None, False, min_size, connectivity, options)


def label_instances(embeddings, clustering: Clustering, min_size: int = 0,
                    connectivity: int = 1, *, merge_distance: float | None = None,
                    absorb_small: bool = False, fill_holes: bool = False) -> da.Array:
    """Lazy instance labels: nearest mode per voxel, then components inside each cluster.

    The graph keeps the per-block labels until the global relabel table is known (about 4 bytes
    per voxel); for volumes larger than memory use :func:`write_instances`.

    Parameters
    ----------
    embeddings : numpy, dask or zarr array
        (E [+1], *spatial) embeddings.
    clustering : Clustering
        From :func:`cluster_embeddings`.
    min_size, connectivity
        As for :func:`label_clusters`.{post}

    Returns
    -------
    dask.array.Array
        int32 labels 1..M (0 = background), chunked like the embeddings' spatial axes. The same
        for every chunking of the embeddings, up to the numbering.
    """
    clusters = assign_clusters(embeddings, clustering)
    min_size = whole(min_size, "min_size", 0)
    connectivity = _check_connectivity(connectivity, clusters.ndim)
    options = _post.post_options(merge_distance, absorb_small, fill_holes, min_size)
    emb = _embeddings(embeddings, clustering.foreground) if options.merge_distance else None
    return _label_graph(clusters, emb, clustering.foreground, min_size, connectivity, options)


if label_instances.__doc__:  # None under python -OO
    label_instances.__doc__ = label_instances.__doc__.replace("{post}", _POST_DOC)


def segment_instances(embeddings, settings=None, clustering=None, foreground: bool = True, *,
                      position_scale=None, device: str = "cpu", **overrides) -> tuple[da.Array, Clustering]:
    """:func:`cluster_embeddings` then :func:`label_instances`; returns (labels, clustering).

    ``settings``: a :class:`~napari_shiftseg.network.settings.SegmentationSettings` (default: its
    defaults with no smallest-object filter); ``clustering``: a
    :class:`~napari_shiftseg.inference.segment_options.ClusterOptions`; ``overrides`` change fields of
    either by name (``bandwidth=1.0``, ``n_seeds=200``). ``position_scale`` and ``device`` go to
    :func:`cluster_embeddings` (a spatial model's ``config.positions``; where mean-shift runs).
    """
    from ..network.settings import SegmentationSettings
    from .segment_options import settings_and_clustering

    settings, clustering = settings_and_clustering(settings, clustering, overrides, "segment_instances",
                                                   SegmentationSettings(min_size=0))
    merge = settings.merge_distance or None  # 0 switches merging off
    _post.post_options(merge, settings.absorb_small, settings.fill_holes, settings.min_size)  # fail before clustering
    c = clustering
    found = cluster_embeddings(embeddings, settings.bandwidth, settings.fg_threshold, foreground, c,
                               device=device, position_scale=position_scale)
    labels = label_instances(embeddings, found, settings.min_size, c.connectivity, merge_distance=merge,
                             absorb_small=settings.absorb_small, fill_holes=settings.fill_holes)
    return labels, found


# --------------------------------------------------------------------------- zarr-staged


def _chunk_slices(shape, chunks):
    """(block index, slices) of every block of a regular chunk grid, in C order."""
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunks)]
    for index in product(*grid):
        yield index, tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))


def _stage_label(emb_block, out, region, clustering: Clustering, connectivity, min_size, options):
    foreground = clustering.foreground
    clusters = _assign_block(emb_block, clustering.modes, _logit(clustering.fg_threshold), foreground,
                             clustering.background)
    origin = tuple(r.start for r in region)
    local, sizes, cluster_of, stats = _label_block_post(
        clusters, emb_block, connectivity, min_size, options, origin, out.shape, foreground)
    out[region] = local
    return sizes, cluster_of, stats


def _stage_face(out, piece, block_chunks, offsets_grid, cluster_table, connectivity,
                contacts=None):
    """Face edges (and contacts) of one slab read back from the staged local labels."""
    local = np.asarray(out[piece])
    gids = np.zeros(local.shape, np.int64)
    for index, _, outer in _piece_blocks(piece, block_chunks):
        gids[outer] = _to_gids(local[outer], offsets_grid[index])
    return _slab_tables(gids, cluster_table, connectivity, contacts)


def _stage_planes(out, region, offset):
    """Global ids on the outer planes of one staged block: ``{(axis, side): plane}`` (side 0
    low, 1 high; each plane one voxel thick along ``axis``)."""
    gids = _to_gids(out[region], offset)
    return {(axis, side): np.take(gids, [0 if side == 0 else -1], axis=axis)
            for axis in range(gids.ndim) for side in (0, 1)}


def _plane_face(low, high, axis, cluster_table, connectivity, contacts=None):
    """:func:`_stage_face` of the face between two blocks along ``axis``, from their planes
    (``low`` the block before the face): the same 2-voxel slab, without reading it again."""
    gids = np.concatenate([low[(axis, 1)], high[(axis, 0)]], axis=axis)
    return _slab_tables(gids, cluster_table, connectivity, contacts)


def _face_tasks(out, dims, offsets_grid, table_key, connectivity, regroups):
    """Delayed face tables of every slab piece of :func:`_face_pieces_with_core`, in its order.

    With face connectivity a piece spans exactly two blocks, so each block is read once for
    its outer planes and every face is built from two of them: one read per block instead of
    two per face (a 64^3 block has up to 6 faces; issue 27). Diagonal connectivity reads the
    pieces themselves (they reach into further blocks).
    """
    pieces = list(_face_pieces_with_core(out.shape, dims, connectivity))
    if connectivity > 1:
        face = dask.delayed(_stage_face, pure=True)
        return [face(out, piece, dims, offsets_grid, table_key, connectivity,
                     (axis, core) if regroups else None) for axis, piece, core in pieces]
    bounds = [np.cumsum((0,) + tuple(c)) for c in dims]
    read = dask.delayed(_stage_planes, pure=True)
    planes: dict = {}

    def planes_of(index):
        if index not in planes:
            region = tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, index))
            planes[index] = read(out, region, offsets_grid[index])
        return planes[index]

    face = dask.delayed(_plane_face, pure=True)
    tasks = []
    for axis, piece, core in pieces:
        low, high = (index for index, _, _ in _piece_blocks(piece, dims))
        tasks.append(face(planes_of(low), planes_of(high), axis, table_key, connectivity,
                          (axis, core) if regroups else None))
    return tasks


def _stage_relabel(out, region, table, offset):
    out[region] = _apply_table(out[region], table, offset)
    return None


def _stage_background(out, region, table, offset, border):
    """Final labels with the block's background labelled -1..-m; returns its tables."""
    combined = _post.background_ids(_apply_table(out[region], table, offset))
    out[region] = combined
    return _post.background_tables(combined, border)


def _stage_background_face(out, piece, block_chunks, offsets_grid, axis):
    combined = np.asarray(out[piece])
    signed = np.zeros(combined.shape, np.int64)
    for index, _, outer in _piece_blocks(piece, block_chunks):
        signed[outer] = _post.to_global_background(combined[outer], offsets_grid[index])
    return _post.background_face(signed, axis)


def _stage_fill(out, region, table, offset):
    out[region] = _post.apply_fill(out[region], table, offset)
    return None


def _write_fill(out, regions, grid, dims, table, offsets_grid, compute):
    """Passes 3-5 with hole filling: relabel + label background, its faces, fill."""
    table_key = dask.delayed(table, pure=True)
    stage = dask.delayed(_stage_background, pure=False)
    results = compute(*[stage(out, region, table_key, offsets_grid[index],
                              _block_border(grid, index)) for index, region in regions])
    bg_offsets = _offsets([r[0] for r in results])
    bg_grid = bg_offsets.reshape(grid)
    face = dask.delayed(_stage_background_face, pure=True)
    faces = compute(*[face(out, piece, dims, bg_grid, axis)
                      for axis, piece, _ in _face_pieces_with_core(out.shape, dims, 1)])
    fill = _fill_table([r[0] for r in results], [r[1] for r in results],
                       [r[2] for r in results], bg_offsets, faces)
    del results, faces
    fill_key = dask.delayed(fill, pure=True)
    apply = dask.delayed(_stage_fill, pure=False)
    compute(*[apply(out, region, fill_key, bg_grid[index]) for index, region in regions])


def write_instances(embeddings, clustering: Clustering, out, min_size: int = 0,
                    connectivity: int = 1, compute=None, *, merge_distance: float | None = None,
                    absorb_small: bool = False, fill_holes: bool = False) -> int:
    """Label instances into the zarr array ``out`` with memory independent of the volume size.

    Same result as :func:`label_instances` but staged through ``out`` itself: pass 1 writes the
    per-block labels into ``out`` and returns only counts (and the per-object tables of
    post-processing), pass 2 reads every block's outer planes back and links the ids that touch
    across each face (the 2-voxel slab of two blocks' planes), and pass 3 rewrites every block
    with its final labels. With ``fill_holes`` pass 3 also labels the background of each block
    (stored as negative ids in ``out``), pass 4 reads the face slabs again and pass 5 writes the
    filled labels. Each pass is a set of independent tasks (run by ``compute``, e.g. on a
    dask.distributed cluster whose workers see the same file system). An interrupted call leaves
    ``out`` half done; just call it again.

    Parameters
    ----------
    embeddings : dask or zarr array
        (E [+1], *spatial) embeddings whose spatial chunks equal ``out``'s chunks.
    clustering : Clustering
        From :func:`cluster_embeddings`.
    out : zarr.Array
        int32 array of the spatial shape, written in place.
    min_size, connectivity
        As for :func:`label_clusters`.
    compute : callable, optional
        ``compute(*delayed) -> results`` (default :func:`dask.compute`).{post}

    Returns
    -------
    int
        Number of objects M (labels are 1..M).
    """
    if not isinstance(clustering, Clustering):
        raise TypeError(f"clustering must be a Clustering, got {type(clustering).__name__}")
    compute = compute or dask.compute
    emb = _embeddings(embeddings, clustering.foreground)
    min_size = whole(min_size, "min_size", 0)
    connectivity = _check_connectivity(connectivity, emb.ndim - 1)
    options = _post.post_options(merge_distance, absorb_small, fill_holes, min_size)
    chunks = tuple(out.chunks)
    if tuple(out.shape) != emb.shape[1:]:
        raise ShiftSegError(f"label array shape {out.shape} does not match embeddings {emb.shape[1:]}")
    emb = emb.rechunk((emb.shape[0],) + chunks)
    blocks = emb.to_delayed()
    regions = list(_chunk_slices(out.shape, chunks))

    stage = dask.delayed(_stage_label, pure=False)
    results = compute(*[stage(blocks[(0,) + index], out, region, clustering, connectivity,
                              min_size, options)
                        for index, region in regions])
    counts = [r[0].shape[0] - 1 for r in results]
    offsets = _offsets(counts)
    grid = tuple(len(range(0, s, c)) for s, c in zip(out.shape, chunks))
    offsets_grid = offsets.reshape(grid)
    sizes = _join_tables([r[0] for r in results])
    cluster_table = _join_tables([r[1] for r in results])
    stats = _post.join_stats([r[2] for r in results], offsets) if options.regroups else None
    del results

    # The tables go into the graph once (one key each), not into every task.
    table_key = dask.delayed(cluster_table, pure=True)
    dims = tuple(tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(out.shape, chunks))
    faces = compute(*_face_tasks(out, dims, offsets_grid, table_key, connectivity, options.regroups))
    if options.regroups:
        stats = _with_face_contacts(stats, [f[1] for f in faces])
        faces = [f[0] for f in faces]
    table, count = _relabel_table(sizes, list(faces), min_size, stats, options)

    if options.fill_holes:
        _write_fill(out, regions, grid, dims, table, offsets_grid, compute)
        return count
    table_key = dask.delayed(table, pure=True)
    relabel = dask.delayed(_stage_relabel, pure=False)
    compute(*[relabel(out, region, table_key, offsets_grid[index]) for index, region in regions])
    return count


if write_instances.__doc__:  # None under python -OO
    write_instances.__doc__ = write_instances.__doc__.replace("{post}", _POST_DOC)
