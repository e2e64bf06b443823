"""Lazy diagnostics the plugin shows next to the embeddings.

- :func:`stitch_check`: max |tiled − whole image| (0 for exact tiling, up to float rounding).
- :func:`tile_boundaries`: voxels next to a tile border.
- :func:`seam_map`: embedding jump across tile borders relative to the typical neighbour
  difference inside tiles (about 1 where tiling is seamless, much larger at seams).
- :func:`phase_map`: which of the f^(d·l) output functions computed each voxel (result 1).
- :func:`grid_lines`: the f^l grid.

Everything except :func:`stitch_check` returns a dask array built from 1-D index arrays or one
``map_overlap``, so a 2000³ volume costs nothing until a slice is viewed.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from ..network.geometry import UNetGeometry
from ..network.tiling import TilePlan
from ..util._errors import ShiftSegError
from ..util.region import Region


# ---- stitch check ------------------------------------------------------------------------------
def _region_slices(region, shape) -> tuple[slice, ...]:
    if region is None:
        return tuple(slice(0, n) for n in shape)
    if isinstance(region, slice):
        region = (region,)
    region = tuple(region)
    if len(region) > len(shape):
        raise ShiftSegError(f"region has {len(region)} axes but the image has {len(shape)} spatial axes")
    region = region + (slice(None),) * (len(shape) - len(region))
    out = []
    for sl, n in zip(region, shape):
        if not isinstance(sl, slice):
            raise ShiftSegError(f"region must be a tuple of slices, got {region!r}")
        start, stop, step = sl.indices(n)
        if step != 1 or stop <= start:
            raise ShiftSegError(f"region {region!r} must select a non-empty, contiguous part of {shape}")
        out.append(slice(start, stop))
    return tuple(out)


def _reference_crop(region: tuple[slice, ...], shape, geometry: UNetGeometry):
    """Image crop whose whole-image prediction equals the full image's inside ``region``
    (:meth:`UNetGeometry.context_region`), and where ``region`` lies in it."""
    wanted = Region.from_slices(region, shape)
    crop = wanted.with_context(geometry, shape)
    return crop.to_slices(), wanted.relative_to(crop).to_slices()


def stitch_check(image, model, tile, mode: str = "exact", region=None, device: str = "auto",
                 channel_axis: int | None = None, normalization=None, per_slice: bool = False) -> float:
    """Max abs difference between tiled and whole-image embeddings (inside ``region``).

    Parameters
    ----------
    image, model, tile, mode, device, channel_axis, normalization, per_slice
        As for :func:`~napari_shiftseg.inference.predict.predict_embeddings`.
    region : tuple of slices, optional
        Spatial region to compare. The reference is then the whole-image prediction of a crop
        around the region (on the f^l grid, wider than the receptive field), which equals the
        full image's inside the region, so big volumes stay cheap.

    Returns
    -------
    float
        0.0 (up to float rounding) for exact tiling with a valid-convolution model.
    """
    from ..imaging.normalize import Normalization
    from .predict import _net_of, _normalization, _validate, predict_embeddings, predict_whole

    net = _net_of(model)
    inp = _validate(image, net, channel_axis, per_slice)
    norm = (normalization if isinstance(normalization, Normalization)
            else _normalization(inp.source, normalization, model))
    shape = tuple(inp.array.shape[1:])
    region = _region_slices(region, shape)
    tiled = predict_embeddings(inp.array, net, tile, device=device, mode=mode, channel_axis=0,
                               normalization=norm, per_slice=per_slice)
    tiled = tiled[(slice(None),) + region].compute()
    crop, inner = _reference_crop(region, shape, net.config.geometry)
    whole = predict_whole(inp.array[(slice(None),) + crop], net, device=device, channel_axis=0,
                          normalization=norm, per_slice=per_slice)
    return float(np.abs(tiled - whole[(slice(None),) + inner]).max())


# ---- tile borders and seams --------------------------------------------------------------------
def _broadcast_any(masks: Sequence[np.ndarray], shape, chunks) -> da.Array:
    """OR of 1-D masks, one per trailing axis of ``shape``, as a lazy array."""
    ndim = len(shape)
    lead = ndim - len(masks)
    out = da.zeros(shape, dtype=bool, chunks=chunks)
    for i, mask in enumerate(masks):
        axis = lead + i
        m = da.from_array(np.asarray(mask, dtype=bool), chunks=(out.chunks[axis],))
        out = out | m.reshape((-1,) + (1,) * (ndim - axis - 1))
    return out


def _plan_chunks(plan: TilePlan, shape, lead_chunks=None) -> tuple:
    """Tile chunks on the plan's axes; leading (stack) axes slice by slice unless given."""
    lead = tuple(shape[: len(shape) - plan.ndim])
    if lead_chunks is None:
        lead_chunks = tuple((1,) * n for n in lead)
    return tuple(lead_chunks) + plan.chunks


def tile_boundaries(plan: TilePlan, shape: Sequence[int] | None = None) -> da.Array:
    """Lazy bool array: True on voxels whose neighbour across a tile border is in another tile.

    ``shape`` defaults to the plan's image shape; extra leading axes (a slice stack) are
    broadcast.
    """
    shape = tuple(plan.image_shape if shape is None else shape)
    if tuple(shape[len(shape) - plan.ndim:]) != plan.image_shape:
        raise ShiftSegError(f"shape {shape} does not end with the plan's image shape {plan.image_shape}")
    masks = []
    for a in plan.axes:
        m = np.zeros(a.size, dtype=bool)
        b = np.asarray(a.boundaries, dtype=int)
        m[b] = True
        m[b - 1] = True
        masks.append(m)
    return _broadcast_any(masks, shape, _plan_chunks(plan, shape))


def _seam_block(x: np.ndarray, n_tiled: int) -> np.ndarray:
    """Seam ratio for one tile-aligned block with a 1-voxel halo on its last ``n_tiled`` axes."""
    ndim = x.ndim
    first = ndim - n_tiled
    core = tuple(slice(None) if ax < first else slice(1, -1) for ax in range(ndim))
    seam = np.zeros(x[core].shape[1:], dtype=np.float32)
    inside: list[np.ndarray] = []
    for ax in range(first, ndim):
        # only the other tiled axes are trimmed to the core; this axis keeps its halo pairs
        sl = tuple(slice(None) if (a == ax or a < first) else slice(1, -1) for a in range(ndim))
        y = x[sl]
        lo = tuple(slice(None, -1) if a == ax else slice(None) for a in range(ndim))
        hi = tuple(slice(1, None) if a == ax else slice(None) for a in range(ndim))
        d = np.sqrt(((y[hi] - y[lo]) ** 2).sum(axis=0))  # (…, n + 1 along ax, …)
        axd = ax - 1  # channel axis gone
        n = d.shape[axd] - 1

        def at(i, axd=axd, nd=d.ndim):
            return tuple(slice(i, i + 1) if a == axd else slice(None) for a in range(nd))

        inside.append(np.moveaxis(d, axd, 0)[1:n].ravel())
        # the halo pair at each end crosses the block (= tile) border; at the image border the
        # 'nearest' halo repeats the edge voxel, so the jump there is 0 by construction
        seam[at(0)] = np.maximum(seam[at(0)], d[at(0)])
        seam[at(n - 1)] = np.maximum(seam[at(n - 1)], d[at(n)])
    inside_all = np.concatenate(inside) if inside else np.zeros(0)
    typical = float(np.median(inside_all)) if inside_all.size else 0.0
    floor = 1e-6 * float(np.abs(x).max()) + np.finfo(np.float32).tiny
    out = np.zeros(x.shape, dtype=np.float32)
    out[core] = seam / max(typical, floor)
    return out


def seam_map(embeddings, plan: TilePlan) -> da.Array:
    """Lazy float32 map of embedding jumps across tile borders, relative to the typical jump.

    Each voxel next to a tile border gets ``‖e(p) − e(q)‖`` for its neighbour ``q`` across the
    border (the largest over axes), divided by the median neighbour difference inside its own
    tile; every other voxel is 0. Seamless tiling gives values around 1; seams stand out.

    Parameters
    ----------
    embeddings : dask or numpy array, shape (C, *spatial)
        E.g. :func:`~napari_shiftseg.inference.predict.predict_embeddings` output; ``spatial`` ends with
        the plan's image shape (extra leading axes, such as a slice stack, are not tiled).
    plan : TilePlan
        The plan that produced the embeddings.
    """
    emb = embeddings if hasattr(embeddings, "dask") else da.from_array(np.asarray(embeddings))
    shape = tuple(emb.shape[1:])
    if emb.ndim < plan.ndim + 1 or shape[len(shape) - plan.ndim:] != plan.image_shape:
        raise ShiftSegError(
            f"embeddings of shape {tuple(emb.shape)} do not match the plan's image shape {plan.image_shape}"
        )
    lead_chunks = emb.chunks[1:len(shape) - plan.ndim + 1]
    emb = emb.astype(np.float32).rechunk(((emb.shape[0],),) + _plan_chunks(plan, shape, lead_chunks))
    first = emb.ndim - plan.ndim
    depth = {ax: (1 if ax >= first else 0) for ax in range(emb.ndim)}
    seams = da.map_overlap(_seam_block, emb, depth=depth, boundary="nearest", n_tiled=plan.ndim,
                           dtype=np.float32, meta=np.empty((0,) * emb.ndim, dtype=np.float32))
    return seams[0]


def reference_tile(plan: TilePlan, geometry: UNetGeometry) -> tuple[int, ...]:
    """An exact n·f^l tile whose borders differ from ``plan``'s: the reference for seams.

    Exact tiling of any tile size equals whole-image inference, so a second exact run with other
    borders is a whole-image reference that still costs only tiles (memory scales with the tile).
    """
    return tuple(a.snap_tile(t) + a.grid for a, t in zip(geometry.axes, plan.tile))


def seam_error(embeddings, reference, plan: TilePlan) -> da.Array:
    """Lazy float32 map: ‖stitched − reference‖ on voxels beside ``plan``'s tile borders, else 0.

    ``reference`` is whole-image inference (e.g. exact tiling with :func:`reference_tile`). A
    seam is exactly where stitched output departs from it: about 1e-6 for exact tiling, order 1
    for naive tiles off the f^l grid. Unlike :func:`seam_map`, object edges that happen to lie
    on a tile border do not show up.
    """
    emb = embeddings if hasattr(embeddings, "dask") else da.from_array(np.asarray(embeddings))
    ref = reference if hasattr(reference, "dask") else da.from_array(np.asarray(reference))
    if emb.shape != ref.shape:
        raise ShiftSegError(f"embeddings {tuple(emb.shape)} and reference {tuple(ref.shape)} differ in shape")
    diff = da.sqrt(((emb.astype(np.float32) - ref.astype(np.float32)) ** 2).sum(axis=0))
    border = tile_boundaries(plan, diff.shape)
    return da.where(border, diff, np.float32(0)).astype(np.float32)


# ---- phases and the grid -----------------------------------------------------------------------
def _spatial(shape, geometry: UNetGeometry) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < geometry.ndim:
        raise ShiftSegError(f"shape {shape} has fewer axes than the {geometry.ndim}D model")
    return shape


def phase_map(shape: Sequence[int], geometry: UNetGeometry, chunks="auto") -> da.Array:
    """Lazy int32 array: the phase (0 … f^(d·l) − 1) of each voxel, ``geometry.phase`` per voxel.

    The phase index is separable (a mixed-radix number of per-axis cell positions modulo F_a),
    so it is the sum of one small lookup per axis; leading axes beyond the model's
    dimensionality (a slice stack) do not change it.
    """
    shape = _spatial(shape, geometry)
    out = da.zeros(shape, dtype=np.int32, chunks=chunks)
    lead = len(shape) - geometry.ndim
    for i, a in enumerate(geometry.axes):
        stride = int(np.prod(geometry.grids[i + 1:]))
        table = (((np.arange(a.grid) - a.cell_offset) % a.grid) * stride).astype(np.int32)
        axis = lead + i
        idx = da.arange(shape[axis], chunks=(out.chunks[axis],))
        part = idx.map_blocks(lambda b, t=table: t[b % len(t)], dtype=np.int32)
        out = out + part.reshape((-1,) + (1,) * (len(shape) - axis - 1))
    return out


def grid_lines(shape: Sequence[int], geometry: UNetGeometry, chunks="auto") -> da.Array:
    """Lazy bool array: True where a network cell of f^l voxels begins, along any model axis."""
    shape = _spatial(shape, geometry)
    lead = len(shape) - geometry.ndim
    masks = [(np.arange(n) - a.cell_offset) % a.grid == 0 for a, n in zip(geometry.axes, shape[lead:])]
    template = da.zeros(shape, dtype=bool, chunks=chunks)
    return _broadcast_any(masks, shape, template.chunks)


#: Every diagnostic map of a run, in the order the widgets show them.
RUN_DIAGNOSTICS = ("tile_boundaries", "seams", "grid", "phase")


def run_diagnostics(embeddings, image, model, plan: TilePlan, *, device: str = "auto", normalization=None,
                    per_slice: bool = False, channel_axis: int | None = None,
                    kinds: Sequence[str] = RUN_DIAGNOSTICS) -> dict:
    """The lazy diagnostic maps of a tiled run: ``{kind: dask array}`` on the embeddings' grid.

    ``tile_boundaries`` and ``grid`` mark the run's tile borders and the f^l grid; ``phase`` is
    the :func:`phase_map`; ``seams`` is :func:`seam_error` against an exact run of the same
    ``image`` with other tile borders (:func:`reference_tile`), so the reference also costs only
    tiles and napari computes it only where it shows it. ``embeddings`` came from ``plan``
    (``predict_embeddings(image, model, plan=plan, ...)``) with the same ``normalization``,
    ``per_slice`` and ``channel_axis``. The one place the Segment and Inspect widgets, in memory
    or on disk, get their diagnostics from.
    """
    from .predict import predict_embeddings

    unknown = set(kinds) - set(RUN_DIAGNOSTICS)
    if unknown:
        raise ValueError(f"unknown diagnostics {sorted(unknown)}; choose from {RUN_DIAGNOSTICS}")
    geometry = plan.geometry
    shape = tuple(embeddings.shape[1:])
    out = {}
    for kind in kinds:
        if kind == "tile_boundaries":
            out[kind] = tile_boundaries(plan, shape)
        elif kind == "seams":
            reference = predict_embeddings(image, model, tile=reference_tile(plan, geometry), device=device,
                                           mode="exact", normalization=normalization, per_slice=per_slice,
                                           channel_axis=channel_axis)
            out[kind] = seam_error(embeddings, reference, plan)
        elif kind == "grid":
            out[kind] = grid_lines(shape, geometry)
        else:
            out[kind] = phase_map(shape, geometry)
    return out
