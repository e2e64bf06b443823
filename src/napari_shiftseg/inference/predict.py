"""Lazy, exact tile-and-stitch inference: image -> (E [+1 foreground], *spatial) dask array.

The graph is built in three steps, each lazy::

    source (numpy / zarr / dask)  ──reflect pad ONCE──>  padded  ──rechunk on the tile grid──┐
                                                                                          │
    one task per tile (batch): gather its window from the padded chunks it overlaps, ─────┘
    normalise with the GLOBAL statistics, run the net, crop, write its output chunk

The network is a single graph key (``dask.delayed(net, pure=True)``), so a distributed
scheduler ships the weights once. Output chunks are the tiles' write regions, so computing
one slice computes only the tiles it touches (by default on the CPU, 3D: and the neighbours
along the last axis that share their network call, see :data:`AUTO_BATCH_MAX`). Normalisation
statistics are computed once per image (on a subsample) when the graph is built, never per
tile (THEORY.md, result 3).

Why not ``dask.array.pad(mode="reflect")``? In dask 2026.8 it silently returns a wrongly sized
array when a pad is wider than the axis (small images, large contexts), so padding uses
:func:`napari_shiftseg.network.tiling.reflect_pad`, which assembles the same reflection from slices.
"""

from __future__ import annotations

import bisect
import functools
import gc
import itertools
import operator
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
from dask.highlevelgraph import HighLevelGraph
from dask.system import CPU_COUNT

from ..imaging.normalize import Normalization, recorded_normalization
from ..network.devices import memory_budget, resolve_device, resolve_tile
from ..network.spatial import add_positions
from ..network.tiling import TilePlan, gaussian_weight, reflect_pad, tile_plan
from ..network.unet import memory_format
from ..util._errors import ShiftSegError
from ..util._options import with_overrides
from ..util.progress import TILE_PREFIX

#: Padded chunks are at least this long per axis (a multiple of the tile stride), so a window
#: depends on a handful of chunks even for tiny tiles.
MIN_READ_CHUNK = 64

#: ``batch_size=None`` on the CPU, 3D: up to this many tiles (neighbours along the last axis)
#: share one network call, while their estimated memory (``UNetConfig.forward_bytes``) stays
#: under :data:`AUTO_BATCH_BYTES` and under this machine's share per concurrent task; the output
#: keeps one chunk per tile. Why: for a batch of one, torch sends every convolution whose input
#: has N·C·D·H <= 20480 to its slow im2col path (``slow_conv3d_forward`` plus layout copies)
#: instead of oneDNN, and a batch of two takes oneDNN everywhere. The deep levels of a small
#: tile fall under that threshold: one 64³ tile of the l = 3, 4-channel U-Net ran at half the
#: per-FLOP speed of the whole image; 2 tiles per call took 0.46x the time per tile, 4 tiles
#: 0.4x (``benchmarks/profile_unet.py --vs-whole``, ``bench_tiling.py --batch 1 auto``). Large
#: tiles gain little (128³: 0.86-0.99x).
AUTO_BATCH_MAX = 4
#: The estimate is an upper bound: 4 tiles of 64³ of the bundled 3D model, estimated at
#: 2.2 GiB, grew the peak RSS by 0.65 GiB (1 tile: 0.55 GiB estimated, 0.2 GiB measured).
AUTO_BATCH_BYTES = 5 * 2**29  # 2.5 GiB per call (estimated)


# ---- input validation ------------------------------------------------------------------------
def _net_of(model):
    net = getattr(model, "net", model)
    if not isinstance(net, torch.nn.Module) or not hasattr(net, "config"):
        raise TypeError(f"model must be a shiftseg Model or UNet, got {type(model).__name__}")
    return net


@dataclass(frozen=True)
class _Input:
    """A validated image: channel-first dask array (C, [Z,] *spatial) and its layout."""

    array: da.Array
    stacked: bool  # a 2D model applied slice by slice along the first spatial axis
    source: object  # the validated, not yet converted image (for normalisation statistics)

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1 + self.stacked:])


def _check_dtype(image) -> None:
    dtype = np.dtype(image.dtype)
    if dtype == np.bool_:
        return
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ShiftSegError(f"the image must hold real numbers, got dtype {dtype}")


def _as_array(image):
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        return image
    if isinstance(image, (list, tuple)):
        return np.asarray(image)
    raise TypeError(f"image must be a numpy, dask or zarr array, got {type(image).__name__}")


def _validate(image, net, channel_axis, per_slice) -> _Input:
    image = _as_array(image)
    _check_dtype(image)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 0 or 0 in shape:
        raise ShiftSegError(f"the image is empty (shape {shape})")
    g, channels = net.config.geometry, net.config.in_channels
    if channel_axis is not None:
        if not isinstance(channel_axis, (int, np.integer)) or not -len(shape) <= channel_axis < len(shape):
            raise ShiftSegError(f"channel_axis {channel_axis!r} is not an axis of an image with shape {shape}")
        channel_axis = int(channel_axis) % len(shape)
        if shape[channel_axis] != channels:
            raise ShiftSegError(
                f"the model expects {channels} channel(s) but axis {channel_axis} of the image "
                f"(shape {shape}) has {shape[channel_axis]}"
            )
    elif channels != 1:
        raise ShiftSegError(
            f"the model expects {channels} channels; say which image axis holds them with channel_axis"
        )
    n_spatial = len(shape) - (channel_axis is not None)
    stacked = False
    if n_spatial == g.ndim:
        pass
    elif g.ndim == 2 and n_spatial == 3:
        if not per_slice:
            raise ShiftSegError(
                f"a 2D model cannot segment a 3D image (shape {shape}) directly; use per_slice=True "
                "to apply it to each slice along the first axis, or set channel_axis if an axis "
                "holds channels"
            )
        stacked = True
    elif g.ndim == 3 and n_spatial == 2:
        raise ShiftSegError(f"a 3D model needs a 3D image, got a 2D image of shape {shape}; use a 2D model")
    else:
        raise ShiftSegError(
            f"image of shape {shape} has {n_spatial} spatial axes; a {g.ndim}D model needs {g.ndim}"
            + (" (or 3 with per_slice=True)" if g.ndim == 2 else "")
        )
    if per_slice and g.ndim == 3:
        raise ShiftSegError("per_slice=True applies a 2D model slice by slice; this model is 3D")

    if hasattr(image, "dask"):
        arr = image
    else:
        # name=False: a random name instead of hashing a possibly huge numpy array.
        arr = da.from_array(image, name=False)
    arr = arr[None] if channel_axis is None else da.moveaxis(arr, channel_axis, 0)
    return _Input(arr, stacked, image)


def _normalization(image, normalization, model=None, channels_first: bool = False) -> Normalization:
    if normalization is None:
        # The percentiles the model was trained with (recorded in its file), never a default
        # that merely happens to agree today; per channel for a multi-channel network.
        return recorded_normalization(image, getattr(model, "meta", None), getattr(model, "name", "the model"),
                                      channels_first=channels_first)
    if normalization is False:
        return Normalization(0.0, 1.0)
    if isinstance(normalization, Normalization):
        return normalization
    try:
        low, high = (float(v) for v in normalization)
    except (TypeError, ValueError):
        raise ShiftSegError(
            f"normalization must be None (percentiles), False (none), a Normalization or "
            f"(low, high), got {normalization!r}"
        ) from None
    return Normalization(low, high)


def _prepare_net(net, device: torch.device):
    """Eval mode on ``device`` in channels_last(_3d): once, before any task runs."""
    net.eval()
    net.to(device=device, memory_format=memory_format(net.config.geometry.ndim))
    return net


# ---- the tile tasks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """What every tile task shares (static; opaque to dask's key substitution)."""

    low: tuple[float, ...]    # per input channel (one value for a single channel)
    scale: tuple[float, ...]
    device: str
    half: bool
    ndim: int
    plan: TilePlan | None = None  # only to name tiles in error messages
    threads: int = 0  # torch CPU threads every tile runs with (0: leave as is)


@dataclass(frozen=True)
class _Group:
    """One task: gather a window, run a batch of tiles, write one output chunk."""

    buffer_shape: tuple[int, ...]  # (C, [Z,] *union window)
    # per axis: (part of a padded chunk, where it goes in the buffer); the dependencies are
    # the product over axes, in the same order as the task's list of keys
    reads: tuple[tuple[tuple[slice, slice], ...], ...]
    windows: tuple[tuple[slice, ...], ...]  # per batch item: window in the buffer (no channel)
    crops: tuple[tuple[slice, ...], ...]  # per batch item: part of the raw output kept
    writes: tuple[tuple[slice, ...], ...]  # per batch item: where it goes in the output chunk
    out_shape: tuple[int, ...]  # (E, [Z,] *chunk)
    items: tuple  # (slice z or None, tile index) per item, for error messages
    # blend: (tile shape, part of its importance map that is kept); the map is rebuilt in the
    # task (cached) rather than stored, so a graph of many tiles does not carry many copies
    weight: tuple | None = None


@functools.lru_cache(maxsize=8)
def _gaussian(tile: tuple[int, ...]) -> np.ndarray:
    weight = gaussian_weight(tile)
    weight.flags.writeable = False  # shared between tasks
    return weight


def _weight(tile, part) -> np.ndarray:
    return _gaussian(tuple(tile))[part]


def _run_net(net, batch: np.ndarray, run: _Run) -> np.ndarray:
    device = torch.device(run.device)
    if device.type == "cpu" and run.threads and torch.get_num_threads() != run.threads:
        # oneDNN picks its convolution algorithm by thread count, and different algorithms
        # round differently (3D: up to 6e-5 measured). Every tile runs with the thread count of
        # the process that built the graph, so a dask worker (often 1 thread) computes exactly
        # what the client would. In the client it is already that count: nothing changes there.
        torch.set_num_threads(run.threads)
    x = torch.from_numpy(batch).to(device).contiguous(memory_format=memory_format(run.ndim))
    autocast = torch.autocast(device.type, dtype=torch.float16) if run.half else nullcontext()
    with torch.inference_mode(), autocast:
        y = net(x)
    return y.float().cpu().numpy()


def _gather(pieces, group: _Group) -> np.ndarray:
    """The batch (item, C, [Z,] *window) straight from the padded chunks: each piece goes to
    every window it overlaps, so the windows of a batch are copied once, without a union
    buffer in between (tiles of one batch overlap by their context)."""
    channels = group.buffer_shape[0]
    window = tuple(w.stop - w.start for w in group.windows[0])
    batch = np.empty((len(group.windows), channels) + window, dtype=np.float32)
    for piece, combo in zip(pieces, itertools.product(*group.reads)):
        (c_src, c_dst), spatial = combo[0], combo[1:]
        for i, win in enumerate(group.windows):
            src: list = [c_src]
            dst: list = [i, c_dst]
            for (s, d), w in zip(spatial, win):
                lo, hi = max(d.start, w.start), min(d.stop, w.stop)
                if lo >= hi:
                    break
                src.append(slice(s.start + lo - d.start, s.start + hi - d.start))
                dst.append(slice(lo - w.start, hi - w.start))
            else:
                batch[tuple(dst)] = piece[tuple(src)]
    return batch


def _run_group(net, pieces, group: _Group, run: _Run, stacked: bool, split: bool = False):
    """The group's output chunk, or with ``split`` a tuple with one array per tile."""
    batch = _gather(pieces, group)
    per_channel = (1, -1) + (1,) * (batch.ndim - 2)  # (batch, channel, ...)
    batch -= np.asarray(run.low, dtype=np.float32).reshape(per_channel)
    batch *= (1.0 / np.asarray(run.scale, dtype=np.float32)).reshape(per_channel)
    if not np.isfinite(batch).all():
        raise ShiftSegError(
            f"the input window of {_describe(group.items, run.plan)} contains NaN or infinite values "
            "(after normalisation); replace them (e.g. with 0) first"
        )
    y = _run_net(net, batch[:, :, 0] if stacked else batch, run)  # drop the length-1 slice axis
    if not np.isfinite(y).all():
        raise ShiftSegError(
            f"the network produced NaN or infinite values for {_describe(group.items, run.plan)}; "
            "the model is broken (or the image holds extreme values)")
    if split:  # (not for slice stacks)
        return tuple(np.ascontiguousarray(res[(slice(None),) + crop]) for res, crop in zip(y, group.crops))
    out = np.zeros(group.out_shape, dtype=np.float32)
    for res, crop, write in zip(y, group.crops, group.writes):
        part = res[(slice(None),) + crop]
        if stacked:
            part = part[:, None]
        if group.weight is not None:
            part = part * _weight(*group.weight)
        out[(slice(None),) + write] = part
    return out


@dataclass(frozen=True)
class _BlendChunk:
    """Which part of each overlapping tile output lands where in one output chunk."""

    srcs: tuple[tuple[slice, ...], ...]
    writes: tuple[tuple[slice, ...], ...]
    tile: tuple[int, ...]
    weights: tuple[tuple[slice, ...], ...]  # per part: the importance map's kept part
    out_shape: tuple[int, ...]


def _blend(parts, spec: _BlendChunk) -> np.ndarray:
    """Gaussian-weighted average of the overlapping (already weighted) tile outputs."""
    acc = np.zeros(spec.out_shape, dtype=np.float32)
    norm = np.zeros(spec.out_shape[1:], dtype=np.float32)
    for part, src, weight, write in zip(parts, spec.srcs, spec.weights, spec.writes):
        acc[(slice(None),) + write] += part[(slice(None),) + src]
        norm[write] += _weight(spec.tile, weight)
    return acc / norm


# ---- graph construction -----------------------------------------------------------------------
def _read_chunks(plan: TilePlan, stacked_chunks) -> tuple[tuple[int, ...], ...]:
    """Chunks of the padded input, with boundaries on multiples of each axis' tile stride."""
    chunks = []
    for a in plan.axes:
        step = a.stride * max(1, -(-MIN_READ_CHUNK // a.stride))
        n, rem = divmod(a.padded, step)
        chunks.append((step,) * n + ((rem,) if rem else ()))
    return tuple(stacked_chunks) + tuple(chunks)


def _overlaps(bounds: Sequence[int], lo: int, hi: int):
    """Chunks (index, source slice, destination slice) that cover [lo, hi) on one axis."""
    first = bisect.bisect_right(bounds, lo) - 1
    out = []
    i = first
    while i < len(bounds) - 1 and bounds[i] < hi:
        a, b = max(lo, bounds[i]), min(hi, bounds[i + 1])
        out.append((i, slice(a - bounds[i], b - bounds[i]), slice(a - lo, b - lo)))
        i += 1
    return out


def _bounds(chunks) -> list[list[int]]:
    return [np.concatenate([[0], np.cumsum(c)]).astype(int).tolist() for c in chunks]


def _describe(items, plan: TilePlan | None) -> str:
    parts = []
    for z, index in items:
        where = f"slice {z}, " if z is not None else ""
        if plan is not None:
            region = ", ".join(f"{w.start}:{w.stop}" for w in plan.tile_at(index).write)
            where += f"output region [{region}]"
        parts.append(f"tile {index} ({where.rstrip(', ')})")
    return ", ".join(parts)


def _split_sizes(n: int, batch: int) -> list[int]:
    """``n`` in as few parts of at most ``batch`` as possible, as equal as possible (5 by 4:
    3 + 2, not 4 + 1: a lone tile would run at a batch of one)."""
    parts = -(-n // batch)
    q, r = divmod(n, parts)
    return [q + 1] * r + [q] * (parts - r)


def _groups(plan: TilePlan, stack: int | None, batch: int, split: bool = False):
    """Yield (chunk index, [(z or None, tile index)]) — the tiles one task runs together.

    ``split``: the task's tiles keep one output chunk each, so the groups need not be of equal
    size (balanced, :func:`_split_sizes`); the chunk index is then only a unique name.
    """
    if split:  # (not for slice stacks)
        *outer, last = plan.grid_shape
        for index in itertools.product(*(range(n) for n in outer)):
            k0 = 0
            for size in _split_sizes(last, batch):
                yield index + (k0,), [(None, index + (k,)) for k in range(k0, k0 + size)]
                k0 += size
        return
    if stack is not None:
        # 2D model on a stack: batch consecutive slices of the same tile.
        for zc, z0 in enumerate(range(0, stack, batch)):
            zs = range(z0, min(z0 + batch, stack))
            for index in itertools.product(*(range(n) for n in plan.grid_shape)):
                yield (zc,) + index, [(z, index) for z in zs]
        return
    if plan.mode == "blend":
        batch = 1  # each blend tile is its own task; chunks combine them afterwards
    *outer, last = plan.grid_shape
    for index in itertools.product(*(range(n) for n in outer)):
        for chunk, k0 in enumerate(range(0, last, batch)):
            yield index + (chunk,), [(None, index + (k,)) for k in range(k0, min(k0 + batch, last))]


def _chunks_of(n: int, step: int) -> tuple[int, ...]:
    q, r = divmod(n, step)
    return (step,) * q + ((r,) if r else ())


def _build(inp: _Input, net, plan: TilePlan, run: _Run, batch: int, split: bool = False) -> da.Array:
    # The tile layer creates many small, long-lived objects: cyclic GC passes over the growing
    # graph made building ~2x slower and find nothing to free.
    enabled = gc.isenabled()
    gc.disable()
    try:
        out = _build_graph(inp, net, plan, run, batch, split)
    finally:
        if enabled:
            gc.enable()
    if net.config.embedding == "spatial":
        # Global positions, added after stitching: the tiles stay exact (see spatial.py).
        out = add_positions(out, net.config.position_scale, net.config.geometry.ndim)
    return out


def _build_graph(inp: _Input, net, plan: TilePlan, run: _Run, batch: int, split: bool = False) -> da.Array:
    """The lazy output. ``split``: a task runs ``batch`` tiles in one network call but each
    tile keeps its own output chunk (a small task per tile takes it from the task's tuple);
    otherwise a task's tiles write one chunk (``batch_size``'s documented chunks)."""
    channels = inp.array.shape[0]
    stacked = int(inp.stacked)
    stack = inp.array.shape[1] if stacked else None
    split = split and batch > 1 and plan.mode != "blend" and not stacked
    padded = reflect_pad(inp.array, ((0, 0),) * (1 + stacked) + plan.pad_width)
    # A slice stack is read in chunks of a few batches, not slice by slice: fewer tasks.
    read_z = (_chunks_of(stack, batch * max(1, -(-8 // batch))),) if stack is not None else ()
    padded = padded.rechunk(_read_chunks(plan, ((channels,),) + read_z))
    bounds = _bounds(padded.chunks)

    token = uuid.uuid4().hex
    net_key = dask.delayed(net, pure=True, name=f"shiftseg-net-{token}")
    tiles_name = TILE_PREFIX + token
    # split: the network calls are their own keys; the tile keys (counted by progress) take
    # their tile from them
    calls_name = "shiftseg-calls-" + token if split else tiles_name
    out_channels = net.config.out_channels
    fronts = plan.geometry.crop_fronts

    # Everything per axis is solved once; a group only combines per-axis answers.
    per_axis = [[(a.window_slice(k), a.write(k), a.crop_slice(k)) for k in range(a.count)]
                for a in plan.axes]
    overlaps: dict = {}

    def reads(axis, lo, hi):
        if (axis, lo, hi) not in overlaps:
            overlaps[axis, lo, hi] = _overlaps(bounds[axis], lo, hi)
        return overlaps[axis, lo, hi]

    layer: dict[Any, tuple] = {}
    tile_boxes: dict = {}
    for chunk_index, items in _groups(plan, stack, batch, split):
        zs = [z for z, _ in items]
        win, out, rel_windows, rel_writes, crops = [], [], [], [], None
        if stacked:
            win.append((zs[0], zs[-1] + 1))
            out.append((zs[0], zs[-1] + 1))
            rel_windows.append([slice(z - zs[0], z - zs[0] + 1) for z in zs])
            rel_writes.append(rel_windows[-1])
        for axis, info in enumerate(per_axis):
            ks = [index[axis] for _, index in items]
            w_lo = min(info[k][0].start for k in ks)
            w_hi = max(info[k][0].stop for k in ks)
            o_lo = min(info[k][1].start for k in ks)
            o_hi = max(info[k][1].stop for k in ks)
            win.append((w_lo, w_hi))
            out.append((o_lo, o_hi))
            rel_windows.append([slice(info[k][0].start - w_lo, info[k][0].stop - w_lo) for k in ks])
            rel_writes.append([slice(info[k][1].start - o_lo, info[k][1].stop - o_lo) for k in ks])
        crops = tuple(tuple(per_axis[a][index[a]][2] for a in range(plan.ndim)) for _, index in items)
        group_reads = [reads(0, 0, channels)] + [reads(a + 1, lo, hi) for a, (lo, hi) in enumerate(win)]
        keys = [(padded.name,) + tuple(c[0] for c in combo) for combo in itertools.product(*group_reads)]
        tile_weight = None
        if plan.mode == "blend":
            # crop - crop_front is the kept part's position inside the tile-sized map
            tile_weight = (plan.tile, tuple(slice(c.start - f, c.stop - f) for c, f in zip(crops[0], fronts)))
        group = _Group(
            buffer_shape=(channels,) + tuple(hi - lo for lo, hi in win),
            reads=tuple(tuple((c[1], c[2]) for c in r) for r in group_reads),
            windows=tuple(zip(*rel_windows)), crops=crops, writes=tuple(zip(*rel_writes)),
            out_shape=(out_channels,) + tuple(hi - lo for lo, hi in out),
            items=tuple((z, index) for z, index in items),
            weight=tile_weight,
        )
        key = (calls_name, 0) + chunk_index
        if split:
            layer[key] = (_run_group, net_key.key, keys, group, run, inp.stacked, True)
            for i, (_, index) in enumerate(items):
                layer[(tiles_name, 0) + index] = (operator.getitem, key, i)
            continue
        layer[key] = (_run_group, net_key.key, keys, group, run, inp.stacked)
        tile_boxes[key] = (out, tile_weight)

    spatial_chunks = list(plan.chunks)
    if split:
        batch = 1  # chunks: one per tile
    if not stacked and plan.mode != "blend" and batch > 1:
        # a batch of tiles along the last axis writes one chunk
        last = spatial_chunks[-1]
        spatial_chunks[-1] = tuple(sum(last[k:k + batch]) for k in range(0, len(last), batch))
    chunks = ((out_channels,),) + ((_chunks_of(stack, batch),) if stack is not None else ()) + tuple(spatial_chunks)
    name = tiles_name
    if plan.mode == "blend":
        name = "shiftseg-blend-" + token
        _add_blend_layer(layer, name, tile_boxes, chunks, out_channels, plan.tile)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[padded, net_key])
    meta = np.empty((0,) * len(chunks), dtype=np.float32)
    return da.Array(graph, name, chunks, dtype=np.float32, meta=meta)


def _add_blend_layer(layer, name, tile_boxes, chunks, out_channels, tile):
    """Per output chunk: weighted sum of the tile outputs that overlap it, over the weights."""
    # tile outputs per axis, so each chunk finds its few overlapping tiles without a full scan
    tiles_name = next(iter(tile_boxes))[0]
    per_axis: list[dict[int, tuple[int, int]]] = [{} for _ in chunks[1:]]
    for key, (out, _) in tile_boxes.items():
        for axis, (index, interval) in enumerate(zip(key[2:], out)):
            per_axis[axis][index] = interval
    bounds = _bounds(chunks[1:])
    for chunk_index in itertools.product(*(range(len(c)) for c in chunks[1:])):
        box = [(b[i], b[i + 1]) for b, i in zip(bounds, chunk_index)]
        candidates = [[i for i, (lo, hi) in axis.items() if lo < bhi and hi > blo]
                      for axis, (blo, bhi) in zip(per_axis, box)]
        keys, srcs, weights, writes = [], [], [], []
        for index in itertools.product(*candidates):
            key = (tiles_name, 0) + index
            out, (_, kept) = tile_boxes[key]
            inter = [(max(lo, olo), min(hi, ohi)) for (lo, hi), (olo, ohi) in zip(box, out)]
            src = tuple(slice(lo - olo, hi - olo) for (lo, hi), (olo, _) in zip(inter, out))
            keys.append(key)
            srcs.append(src)
            # the part of the importance map this chunk takes: the tile kept ``kept`` of it,
            # and the chunk takes ``src`` of that (the map has no slice axis: it broadcasts
            # over a stack's slices)
            spatial = src[len(src) - len(kept):]
            weights.append(tuple(slice(k.start + s.start, k.start + s.stop) for k, s in zip(kept, spatial)))
            writes.append(tuple(slice(lo - blo, hi - blo) for (lo, hi), (blo, _) in zip(inter, box)))
        spec = _BlendChunk(tuple(srcs), tuple(writes), tile, tuple(weights),
                           (out_channels,) + tuple(hi - lo for lo, hi in box))
        layer[(name, 0) + chunk_index] = (_blend, keys, spec)


# ---- public API -------------------------------------------------------------------------------
def _check_plan(plan: TilePlan, inp: _Input, net) -> TilePlan:
    """A plan made by the caller (:func:`predict_plan`) must be this image's and this net's."""
    if not isinstance(plan, TilePlan):
        raise TypeError(f"plan must be a TilePlan (from predict_plan), got {type(plan).__name__}")
    if tuple(plan.image_shape) != tuple(inp.spatial) or plan.geometry != net.config.geometry:
        raise ShiftSegError(
            f"the tile plan was made for an image of shape {tuple(plan.image_shape)} and another "
            f"network; this image is {tuple(inp.spatial)}: make the plan with predict_plan(image, model)")
    return plan


@dataclass(frozen=True)
class Reading:
    """How an image becomes the network's input.

    channel_axis : image axis holding the model's input channels (None: one channel).
    per_slice : apply a 2D model to each slice of a 3D image along its first axis.
    normalization : None (the percentiles recorded in the model file, 1-99.8 if none, of the
        whole image, computed once), False (none), a Normalization or (low, high).
    """

    channel_axis: int | None = None
    per_slice: bool = False
    normalization: Any = None


def predict_embeddings(image, model, tile: int | Sequence[int] | str = 128, device: str = "auto",
                       mode: str = "exact", batch_size: int | None = None, half: bool = False,
                       plan: TilePlan | None = None, reading: Reading | None = None,
                       **overrides) -> da.Array:
    """Lazy per-voxel embeddings of ``image``, tiled so the result equals whole-image inference.

    Parameters
    ----------
    image : numpy, dask or zarr array
        2D or 3D, optionally with a channel axis (``channel_axis``).
    model : Model or UNet
        Put in eval mode on ``device`` (channels_last) in place.
    tile : int, sequence of int or "auto"
        Output tile per spatial axis; ``exact`` mode snaps it to n·f^l (see
        :func:`~napari_shiftseg.network.tiling.tile_plan`). ``"auto"``: the largest n·f^l tile whose
        estimated memory fits the device (:func:`~napari_shiftseg.network.devices.auto_tile`).
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'``.
    mode : {"exact", "naive", "blend"}
        Only ``exact`` is exact; the others exist for comparison.
    batch_size : int, optional
        Tiles per network call: consecutive tiles along the last axis (or consecutive slices
        with ``per_slice``) share one task, and then one output chunk. ``None`` (default):
        automatic, one chunk per tile; a 3D model on the CPU runs up to
        :data:`AUTO_BATCH_MAX` neighbouring tiles per call while they fit
        :data:`AUTO_BATCH_BYTES` (2-4x faster per small tile, see :data:`AUTO_BATCH_MAX`),
        anything else one tile per call. ``1``: one tile per call.
    half : bool
        float16 autocast; GPU only.
    plan : TilePlan, optional
        The tiling, made once by the caller with :func:`predict_plan` (and shared with the
        diagnostics and the user's messages); ``tile`` and ``mode`` are then not used.
    reading : Reading, optional
        Channel axis, per-slice runs of a 2D model, normalisation (:class:`Reading`); its
        fields may be given by name (``channel_axis=0``, ``per_slice=True``,
        ``normalization=False``).

    Returns
    -------
    dask.array.Array
        float32, shape ``(E + 1, *spatial)`` with the foreground logit last (``(E, ...)``
        without a foreground head); chunks are the output tiles, one chunk on the channel
        axis. Nothing is computed until asked; a slice computes only the tiles it touches.

    Raises
    ------
    ShiftSegError
        Wrong dimensionality or channel count, empty, non-numeric, NaN/inf (also found per
        tile at compute time, naming the tile), tiles below f^l in exact mode, bad device.
    """
    read = with_overrides(reading or Reading(), "predict_embeddings", overrides)
    channel_axis, per_slice, normalization = read.channel_axis, read.per_slice, read.normalization
    net = _net_of(model)
    inp = _validate(image, net, channel_axis, per_slice)
    auto = batch_size is None
    if auto:
        batch_size = 1
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ShiftSegError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = resolve_device(device)
    if half and dev.type == "cpu":
        raise ShiftSegError("half precision needs a GPU; on the CPU use half=False")
    if plan is not None:
        plan = _check_plan(plan, inp, net)
    else:
        plan = tile_plan(inp.spatial, net.config.geometry, resolve_tile(tile, net.config.geometry, net, dev, half),
                         mode)
    multi = net.config.in_channels > 1
    # Multi-channel: percentiles of each channel of the channel-first view.
    norm = _normalization(inp.array if multi else inp.source, normalization, model, channels_first=multi)
    low, scale = norm.offset_scale
    run = _Run(tuple(low.tolist()), tuple(scale.tolist()), str(dev), bool(half), net.config.geometry.ndim,
               plan, torch.get_num_threads())
    if auto:
        batch_size = _auto_batch(net, plan, dev, inp.stacked)
    return _build(inp, _prepare_net(net, dev), plan, run, int(batch_size), split=auto)


def _auto_batch(net, plan: TilePlan, dev: torch.device, stacked: bool) -> int:
    """Tiles per network call for ``batch_size=None`` (see :data:`AUTO_BATCH_MAX`)."""
    g = net.config.geometry
    if dev.type != "cpu" or stacked or g.ndim != 3 or plan.mode == "blend":
        return 1  # measured on the CPU for 3D models only; elsewhere one tile per call
    most = min(AUTO_BATCH_MAX, plan.grid_shape[-1])
    if most < 2:
        return 1
    # a local run computes up to one task per core at once (runner's thread pool)
    budget = min(AUTO_BATCH_BYTES, memory_budget(dev) // max(1, CPU_COUNT))
    batch = 1
    while batch < most and net.config.forward_bytes(plan.tile, batch + 1) <= budget:
        batch += 1
    return batch


def predict_plan(image, model, tile: int | Sequence[int] | str = 128, mode: str = "exact",
                 channel_axis: int | None = None, per_slice: bool = False, device: str = "auto") -> TilePlan:
    """The :class:`~napari_shiftseg.network.tiling.TilePlan` of ``image``: make it once per run and pass
    it to :func:`predict_embeddings` (``plan=``) and the diagnostics; ``plan.message`` says when
    the tile was changed (e.g. snapped to n·f^l)."""
    net = _net_of(model)
    inp = _validate(image, net, channel_axis, per_slice)
    return tile_plan(inp.spatial, net.config.geometry, resolve_tile(tile, net.config.geometry, net, device), mode)


def predict_whole(image, model, device: str = "auto", channel_axis: int | None = None,
                  half: bool = False, normalization=None, per_slice: bool = False) -> np.ndarray:
    """Whole-image inference (one tile covering the image): the exact reference, as numpy.

    Same padding, normalisation and grid as :func:`predict_embeddings`, so outputs align
    voxel for voxel. Needs memory for the whole image's activations.
    """
    net = _net_of(model)
    inp = _validate(image, net, channel_axis, per_slice)
    whole = net.config.geometry.cover(inp.spatial)
    lazy = predict_embeddings(image, model, tile=whole, device=device, mode="exact",
                              channel_axis=channel_axis, half=half, normalization=normalization,
                              per_slice=per_slice)
    return lazy.compute(scheduler="sync")
