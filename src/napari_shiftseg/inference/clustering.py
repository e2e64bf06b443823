"""Steps 1 and 2 of embeddings -> instances (:mod:`napari_shiftseg.inference.instances` has the whole
story): mean-shift on a subsample of the whole image's foreground, then the nearest mode
(*cluster*) of every voxel, block by block.

The subsample is drawn chunk by chunk (each chunk contributes foreground voxels in proportion to
its size), so a dask or zarr volume is streamed once and never held in memory; a tile alone is
never clustered (it does not see all clusters).

**Blockwise modes (spatial embeddings, large images; issue 27).** One subsample of
``max_points`` thins out as the image grows (3 points per nucleus at 67 Mvoxel), and mean-shift
then misses objects. With a *spatial* head (``position_scale`` given: the first d embedding
channels are ``scale · position + offset``) the embedding space is laid out like the image, so
the modes are found region by region instead, at a fixed sample density:

1. the sample is every foreground voxel whose key (the chunking-independent hash of
   :func:`sample_foreground`) is below ``density``: ``density`` points per foreground voxel;
2. *embedding* space is cut into cubes of side ``block`` (embedding units, on a grid through 0)
   along the d positional channels; the cubes at the image's edge reach to infinity. A cube's
   mean-shift gets every sample point whose positional embedding lies in the cube grown by the
   halo ``H``, the kernel's reach (one bandwidth for the flat kernel, three for the Gaussian),
   i.e. ``H / scale_a`` voxels along axis a;
3. the cube's mean-shift is told which points and modes are its own (``inside``): it seeds only
   from the cube's own points (in proportion to them, ``_SEED_SHARE``), re-seeds only where the
   cube's own points lack a mode, and drops the modes outside the cube *before* merging its
   modes;
4. modes of different cubes closer than the merge radius (the bandwidth, as in
   :func:`~napari_shiftseg.inference.meanshift.mean_shift`) are merged greedily, the one with
   more support (points within one bandwidth) kept.

Why the halo suffices: a flat-kernel window around a mode m holds the points within one
bandwidth of m, so for a mode in the cube every point of its window is in the grown cube: the
mode is a fixed point of the whole image's mean-shift, and its support (points within one
bandwidth, what the merge compares) is the whole image's, up to mean-shift's binning (a grid
cell cut by the halo's edge lies at the window's edge, where binning already decides within a
cell diagonal which side a point counts on; a margin of half a bandwidth for it changed no
result measured: recall / precision of the nuclei within 0.001 at 4V and 8V, and cost 14 %
more time at 8V). A window cut by the halo's outer edge can only end at a spurious mode outside
the cube, which step 3
drops before it could suppress a mode of the cube; modes of neighbouring cubes meet in step 4.
Nothing depends on the object size or on how far the network's offsets reach (the cubes cut
embedding space, not the image: an object is whole wherever its mode is), and the cubes are
fixed in embedding space, so the modes do not depend on the chunking of the input, nor on the
scheduler. What differs from the global path is the seeding: each cube draws its own seeds and
re-seeds against its own typical support, so the two agree up to mean-shift's seeding noise
(benchmarks/bench_meanshift.py ``--volumes``).

Cost: a cube's mean-shift costs about (its seeds) x (its points and halo), and both grow with
what the cube holds, so cubes are small (16 units: 64 voxels at the bundled models' scale; the
halo, 1.5 units at bandwidth 1.5, adds ~70 % to a cube's points in 3D) and the total is linear
in the foreground, also where the image is thinner than a cube along some axis. The sample
(``density`` of the foreground's vectors) is gathered in this process, and the cubes run one
after the other here. Images whose foreground the global subsample still covers at ``density``
(``min_foreground``, default ``max_points / density``) keep the global path, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..util._errors import ShiftSegError
from ..util._options import with_overrides
from ..util.validate import number, whole
from .meanshift import assign_to_modes, mean_shift

__all__ = ["BlockwiseOptions", "ClusterOptions", "Clustering", "DEFAULT_BANDWIDTH", "DEFAULT_BLOCK",
           "DEFAULT_DENSITY", "DEFAULT_MAX_POINTS", "assign_clusters", "cluster_embeddings", "sample_foreground"]

# Half the push margin 2·delta_d = 6 of the reference loss (train.LOSS_DEFAULTS): clusters
# trained apart by >= 6 are separated, and pulled-in clusters (delta_v = 0.5) fit well inside.
DEFAULT_BANDWIDTH = 2.0
# Points mean-shift works on: seeds x points distances per step, 1000 x 50k is ~0.1 s on a CPU.
DEFAULT_MAX_POINTS = 50_000
# Blockwise modes: sample points per foreground voxel. The global subsample's density at the
# issue's V (4.2 Mvoxel of nuclei, 1.6 M of them foreground: 50k / 1.6M), ~50 points per
# 14-voxel nucleus, which the dev numbers were measured with.
DEFAULT_DENSITY = 0.03
# Blockwise modes: side of a cube of embedding space, in embedding units (64 voxels at the
# bundled models' position scale 0.25). A cube's mean-shift costs (its seeds) x (its points and
# halo), so it grows with the square of what a cube holds; small cubes keep that bounded
# wherever the image is thinner than a cube (a 64-plane stack is 16 units deep). Clustering
# growth from 4V to 8V of bench_scaling's volumes (z doubles; benchmarks/RESULTS.md section 15):
# 32 units x3.2, 24 x2.6, 20 x2.3, 16 x2.2 (x2.0 with the halo of one bandwidth); 12 was 1.6x
# slower than 16 (a call per cube).
DEFAULT_BLOCK = 16.0


@dataclass(frozen=True)
class ClusterOptions:
    """How mean-shift is seeded and voxels are connected; not tuned per model.

    n_seeds, max_points, seed : as for :func:`~napari_shiftseg.inference.instances.cluster_embeddings`.
    connectivity : as for :func:`~napari_shiftseg.inference.instances.label_instances` (1 = faces).
    """

    n_seeds: int = 1000
    max_points: int = DEFAULT_MAX_POINTS
    seed: int = 0
    connectivity: int = 1

    def __post_init__(self):
        for name, low in (("n_seeds", 1), ("max_points", 1), ("seed", 0), ("connectivity", 1)):
            whole(getattr(self, name), name, low)

    def args(self, settings) -> dict[str, Any]:
        """The clustering arguments a run records (and resumes only with): ``settings``
        (a :class:`~napari_shiftseg.network.settings.SegmentationSettings`) plus these."""
        return {**settings.to_meta(), "n_seeds": self.n_seeds, "max_points": self.max_points,
                "seed": self.seed, "connectivity": self.connectivity}


@dataclass(frozen=True)
class BlockwiseOptions:
    """When and how modes are found cube by cube (spatial embeddings only; module docstring).

    density : float
        Sample points per foreground voxel, in (0, 1].
    block : float
        Side of a cube of embedding space, in embedding units (> 0).
    min_foreground : int, optional
        Blockwise from more foreground voxels than this on; None: ``max_points / density``
        (the global subsample would be thinner than ``density``); 0: always.
    """

    density: float = DEFAULT_DENSITY
    block: float = DEFAULT_BLOCK
    min_foreground: int | None = None

    def __post_init__(self):
        number(self.density, "density", 0.0)
        if self.density > 1.0:
            raise ShiftSegError(f"density must be at most 1 (points per foreground voxel), got {self.density!r}")
        number(self.block, "block", 0.0)
        if self.min_foreground is not None:
            whole(self.min_foreground, "min_foreground", 0)

    def threshold(self, max_points: int) -> float:
        """Foreground voxels above which modes are found blockwise."""
        return max_points / self.density if self.min_foreground is None else float(self.min_foreground)


# --------------------------------------------------------------------------- validation


def _as_dask(array, name: str = "embeddings") -> da.Array:
    """numpy / zarr / dask -> dask (zarr keeps its chunks; numpy becomes one block)."""
    if isinstance(array, da.Array):
        return array
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise TypeError(f"{name} must be a numpy, dask or zarr array, got {type(array).__name__}")
    chunks = getattr(array, "chunks", None)
    if not (isinstance(chunks, tuple) and all(isinstance(c, Integral) for c in chunks)):
        chunks = array.shape
    # A numpy array would be hashed whole for its dask name (0.7 s for 4.2 Mvoxel of 4-channel
    # embeddings, a fifth of the clustering at 4V): a random name instead.
    return da.from_array(array, chunks=chunks, asarray=True, name=False if isinstance(array, np.ndarray) else None)


def _embeddings(embeddings, foreground: bool) -> da.Array:
    emb = _as_dask(embeddings)
    if emb.ndim not in (3, 4):
        raise ShiftSegError(
            f"embeddings must be (channels, y, x) or (channels, z, y, x), got shape {emb.shape}"
        )
    if emb.dtype.kind != "f":
        raise ShiftSegError(f"embeddings must be floating point, got dtype {emb.dtype}")
    if emb.shape[0] < (2 if foreground else 1):
        raise ShiftSegError(
            f"embeddings have {emb.shape[0]} channel(s); with a foreground channel they need at "
            "least one embedding channel plus the foreground logit (last)"
        )
    # One block holds all channels of its voxels: every step works on whole embedding vectors.
    return emb.rechunk({0: -1})


def _position_scales(position_scale, n_spatial: int, dim: int) -> tuple[float, ...] | None:
    """``position_scale`` as one positive float per positional channel (None: no spatial head).

    A number applies to every spatial axis of the embeddings; a tuple names the last
    ``len(tuple)`` axes (a 2D model run plane by plane on a stack: two scales, z not positional).
    """
    if position_scale is None:
        return None
    values = tuple(position_scale) if isinstance(position_scale, (tuple, list)) else (position_scale,) * n_spatial
    if not 1 <= len(values) <= n_spatial:
        raise ShiftSegError(f"position_scale needs one value per spatial axis (at most {n_spatial}), "
                            f"got {position_scale!r}")
    scales = tuple(number(v, "position_scale", 0.0) for v in values)
    if dim < len(scales):
        raise ShiftSegError(f"spatial embeddings need at least {len(scales)} embedding channels (one per "
                            f"axis), got {dim}")
    return scales


def _logit(p: float) -> float:
    # sigmoid(l) > p  <=>  l > logit(p): compare logits, no sigmoid of the whole volume needed.
    return math.log(p / (1.0 - p))


# --------------------------------------------------------------------------- clustering


@dataclass(frozen=True)
class Clustering:
    """Modes of the embeddings of a whole image, and how voxels are assigned to them.

    Attributes
    ----------
    modes : numpy.ndarray
        (K, E) float32 cluster centres (mean-shift modes), strongest first.
    bandwidth : float
        Mean-shift bandwidth that found them.
    fg_threshold : float
        Foreground probability threshold (ignored when ``foreground`` is False).
    foreground : bool
        Whether the last embedding channel is a foreground logit.
    background : int or None
        Index of the mode taken as background (only without a foreground channel).
    n_points : int
        Number of voxels the modes were computed from.
    blocks : int
        Number of cubes of embedding space whose mean-shift found the modes (0: one mean-shift
        of the whole image's subsample; see the module docstring).
    """

    modes: np.ndarray = field(repr=False)
    bandwidth: float
    fg_threshold: float = 0.5
    foreground: bool = True
    background: int | None = None
    n_points: int = 0
    blocks: int = 0

    @property
    def n_clusters(self) -> int:
        """Number of modes that become instances (the background mode excluded)."""
        return int(self.modes.shape[0]) - (self.background is not None)

    def to_dict(self) -> dict:
        """JSON-able form (stored in the output zarr's attributes)."""
        out = {"modes": self.modes.tolist(), "bandwidth": self.bandwidth,
               "fg_threshold": self.fg_threshold, "foreground": self.foreground,
               "background": self.background, "n_points": self.n_points}
        if self.blocks:  # only then: what the global path stores is unchanged
            out["blocks"] = self.blocks
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Clustering:
        data = dict(data)
        modes = np.asarray(data.pop("modes"), dtype=np.float32)
        return cls(modes.reshape(len(modes), -1) if modes.size else modes.reshape(0, 0), **data)


#: The first read keeps voxels whose key is below this many times max_points / all voxels: one
#: read suffices whenever the foreground is at least 1/this of the image (nearly always).
_FIRST_READ_MARGIN = 4


def _keys(flat_index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform key in [0, 1) per voxel from its index in the whole image (splitmix64): the
    same voxel gets the same key whatever the chunking, the scheduler or the machine."""
    with np.errstate(over="ignore"):
        z = flat_index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def _sample_block(block, below: float, threshold: float, foreground: bool, seed: int, origin, shape):
    """(foreground voxels, and the (flat index, key, vector) of those whose key is < ``below``)
    of one block at ``origin`` in an image of spatial ``shape``."""
    flat = np.asarray(block).reshape(block.shape[0], -1)
    if foreground:
        candidates = np.flatnonzero(flat[-1] > threshold)
        flat = flat[:-1]
    else:
        candidates = np.arange(flat.shape[1])
    local = np.unravel_index(candidates, block.shape[1:])
    index = np.ravel_multi_index(tuple(c + o for c, o in zip(local, origin)), shape)
    keys = _keys(index, seed)
    keep = keys < below
    vectors = np.ascontiguousarray(flat[:, candidates[keep]].T, dtype=np.float32)
    return candidates.size, index[keep], keys[keep], vectors


_Sample = tuple[int, np.ndarray, np.ndarray, np.ndarray]


def _reader(emb: da.Array, threshold: float, foreground: bool, seed: int, compute) -> Callable[[float], _Sample]:
    """``read(below)``: (foreground voxels, flat index, key, vector of those with key < below)."""
    shape = tuple(emb.shape[1:])
    dim = emb.shape[0] - int(foreground)
    blocks = emb.to_delayed()
    origins = [np.cumsum((0,) + c[:-1]) for c in emb.chunks[1:]]

    def read(below: float) -> _Sample:
        tasks = [dask.delayed(_sample_block, pure=True)(
            blocks[index], below, threshold, foreground, seed,
            tuple(int(o[i]) for o, i in zip(origins, index[1:])), shape)
            for index in np.ndindex(blocks.shape)]
        parts = (compute or dask.compute)(*tasks)
        n_foreground = sum(p[0] for p in parts)
        if not parts:
            return 0, np.zeros(0, np.int64), np.zeros(0), np.zeros((0, dim), np.float32)
        return (n_foreground, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                np.concatenate([p[3] for p in parts]))

    return read


def _first_below(max_points: int, total: int) -> float:
    return min(1.0, _FIRST_READ_MARGIN * max_points / max(total, 1))


def _bottom_k(read: Callable[[float], _Sample], below: float, first: _Sample, max_points: int) -> np.ndarray:
    """The ``max_points`` smallest keys in raster order, from a first read with ``below``
    (reading again, with a larger bound, when it kept too few)."""
    n_foreground, index, keys, vectors = first
    if keys.size < min(max_points, n_foreground) and below < 1.0:
        # A sparse foreground: read again with a bound that keeps enough of it (twice the
        # expected need; all of it when that is most).
        below = min(1.0, 2.0 * max_points / n_foreground)
        while True:
            n_foreground, index, keys, vectors = read(below)
            if keys.size >= min(max_points, n_foreground) or below >= 1.0:
                break
            below = min(1.0, 2.0 * below)
    if keys.size > max_points:  # the max_points smallest keys (every voxel below is here)
        chosen = np.argpartition(keys, max_points - 1)[:max_points]
        index, vectors = index[chosen], vectors[chosen]
    order = np.argsort(index, kind="stable")  # raster order: independent of the chunking
    return np.ascontiguousarray(vectors[order])


def sample_foreground(embeddings, max_points: int = DEFAULT_MAX_POINTS, fg_threshold: float = 0.5,
                      foreground: bool = True, seed: int = 0, compute=None) -> np.ndarray:
    """A uniform random sample of the foreground embedding vectors of the whole image.

    The sample is the ``max_points`` foreground voxels with the smallest keys (all of them when
    there are fewer), in raster order, where a voxel's key is a hash of its position in the
    whole image and ``seed``. So it does not depend on the chunking: a run in memory, one
    staged through zarr tiles, a preview of the whole image and a dask cluster draw the same
    points, hence the same modes and labels (issues 26, 27). Chunks are read once, keeping
    only voxels whose key is small enough; a sparse foreground (under 1/4 of the image) takes
    a second read. Only the sample is ever in memory.

    Returns
    -------
    numpy.ndarray
        (N, E) float32, N = min(max_points, foreground voxels).
    """
    emb = _embeddings(embeddings, foreground)
    max_points = whole(max_points, "max_points", 1)
    threshold = _logit(number(fg_threshold, "fg_threshold", 0.0, 1.0))
    read = _reader(emb, threshold, foreground, seed, compute)
    below = _first_below(max_points, math.prod(emb.shape[1:]))
    return _bottom_k(read, below, read(below), max_points)


def cluster_embeddings(embeddings, bandwidth: float = DEFAULT_BANDWIDTH, fg_threshold: float = 0.5,
                       foreground: bool = True, options: ClusterOptions | None = None,
                       kernel: str = "flat", device: str = "cpu", compute=None,
                       position_scale: float | tuple[float, ...] | None = None,
                       blockwise: BlockwiseOptions | None = None, **overrides) -> Clustering:
    """Mean-shift modes of the embeddings of the whole image.

    Parameters
    ----------
    embeddings : numpy, dask or zarr array
        (E [+1], *spatial) embeddings; with ``foreground`` the last channel is the foreground
        logit. Pass a persisted or zarr-backed array (see the module docstring): a lazy
        prediction graph would be computed here.
    bandwidth : float
        Mean-shift bandwidth in embedding units (about half the push margin ``2·delta_d``).
    fg_threshold : float
        Voxels with ``sigmoid(logit) > fg_threshold`` are foreground.
    foreground : bool
        Whether the last channel is a foreground logit. Without one, every voxel is clustered
        and the most populous cluster is taken as the background (see the module docstring).
    options : ClusterOptions, optional
        ``n_seeds`` (random seeds of the mean-shift per round; the reference uses ~1000, and
        :func:`~napari_shiftseg.inference.meanshift.mean_shift` seeds again where no mode covers), ``max_points``
        (size of the foreground subsample the modes are computed from) and ``seed`` (of the
        subsample and of the seeds: equal seeds give equal modes); its fields may be given by
        name (``n_seeds=200``). Its ``connectivity`` is for labelling, not used here. Found
        blockwise, a cube draws ``2 · n_seeds / max_points`` seeds per sample point it owns (at
        most ``n_seeds``), and ``max_points`` also sets when (``blockwise``).
    kernel : {'flat', 'gaussian'}
        Mean-shift kernel.
    device : str
        Where mean-shift runs ('cpu', 'cuda').
    compute : callable, optional
        ``compute(*delayed) -> results`` that reads the subsample (default :func:`dask.compute`;
        e.g. one bound to a dask.distributed client).
    position_scale : float or tuple of float, optional
        The model's ``position_scale`` when its embedding head is *spatial* (the first channels
        are ``scale · position + offset``); one number for every spatial axis, or one per axis
        for the last ``len(tuple)`` axes (a 2D model run plane by plane: two). Then an image with
        much foreground finds its modes blockwise (module docstring). None: free embeddings,
        always the global path.
    blockwise : BlockwiseOptions, optional
        Sample density, cube size and from how much foreground on (used with ``position_scale``
        and a foreground channel only).

    Returns
    -------
    Clustering
        The modes plus the settings needed to assign voxels to them. No foreground voxel at
        all gives zero modes (and then an empty label image).
    """
    bandwidth = number(bandwidth, "bandwidth", 0.0)
    fg_threshold = number(fg_threshold, "fg_threshold", 0.0, 1.0)
    o = with_overrides(options or ClusterOptions(), "cluster_embeddings", overrides)
    n_seeds, max_points, seed = o.n_seeds, o.max_points, o.seed
    emb = _embeddings(embeddings, foreground)
    scales = _position_scales(position_scale, emb.ndim - 1, emb.shape[0] - int(foreground))
    if blockwise is not None and not isinstance(blockwise, BlockwiseOptions):
        raise TypeError(f"blockwise must be BlockwiseOptions, got {type(blockwise).__name__}")
    blocks = blockwise or BlockwiseOptions()
    read = _reader(emb, _logit(fg_threshold), foreground, seed, compute)
    below = _first_below(max_points, math.prod(emb.shape[1:]))
    if scales is not None and foreground:
        # One read serves both paths: the global one takes the smallest keys of a superset of
        # what it would read alone (the same points), the blockwise one those below density.
        below = max(below, blocks.density)
    first = read(below)
    if scales is not None and foreground and first[0] > blocks.threshold(max_points):
        return _blockwise(first, blocks.density, scales, tuple(emb.shape[1:]), bandwidth, fg_threshold,
                          blocks.block, dict(n_seeds=n_seeds, seed_share=_SEED_SHARE * n_seeds / max_points, seed=seed,
                                                kernel=kernel, device=device))
    points = _bottom_k(read, below, first, max_points)
    if points.shape[0] == 0:
        modes = np.zeros((0, points.shape[1]), np.float32)
        return Clustering(modes, bandwidth, fg_threshold, foreground, None, 0)
    modes = mean_shift(points, bandwidth, n_seeds=n_seeds, seed=seed, kernel=kernel, device=device)
    background = None
    if not foreground and modes.shape[0]:
        counts = np.bincount(assign_to_modes(points, modes), minlength=modes.shape[0] + 1)[1:]
        background = int(np.argmax(counts))
    return Clustering(modes, bandwidth, fg_threshold, foreground, background, int(points.shape[0]))


# --------------------------------------------------------------------------- blockwise modes

#: Reach of the mean-shift kernel in bandwidths: the flat kernel's window; the Gaussian's weight
#: beyond three standard deviations is e^-4.5 = 1 % of the centre's.
_KERNEL_REACH = {"flat": 1.0, "gaussian": 3.0}


#: Seeds per owned sample point of a cube, relative to the global path's n_seeds / max_points.
#: Measured on the bundled 3D model's embeddings of bench_scaling's volumes at 4V and 8V (true
#: nuclei matched one to one by a cluster at IoU > 0.5, recall / precision; block 16, a halo of
#: 1.5 bandwidths): 1x gives 0.988 / 0.993 and 0.985 / 0.993, 2x 0.991 / 0.991 and 0.990 /
#: 0.992, 4x 0.993 / 0.988 and 0.991 / 0.990; 1000 seeds per cube 0.993 / 0.970 and 0.990 /
#: 0.974; before (32-unit cubes, 1000 seeds each, a halo of 2.5 bandwidths) 0.993 / 0.992 and
#: 0.987 / 0.993.
_SEED_SHARE = 2.0


def _halo(bandwidth: float, kernel: str = "flat") -> float:
    """The halo of a cube of embedding space, in embedding units (module docstring): the
    kernel's reach."""
    # An unknown kernel gets the widest reach here; mean_shift then names the allowed ones.
    return _KERNEL_REACH.get(kernel, max(_KERNEL_REACH.values())) * bandwidth


def _cubes(position: np.ndarray, side: float, grow: float, grid: tuple[int, ...]):
    """(point, cube) pairs: every cube (flat index in ``grid``) whose box grown by ``grow`` holds
    the point's ``position`` (N, d); the outermost cubes reach to infinity. Sorted by cube,
    then point.

    Each point's cubes are a box of cells (``span`` along each axis), enumerated per point: the
    cost follows the pairs, not the points times the largest box (which doubled where an axis
    gained its first cube border: issue 27).
    """
    last = np.asarray(grid) - 1
    # np.minimum / np.maximum: np.clip's wrapper costs 10 ms per call here.
    lo = np.minimum(np.maximum(np.floor((position - grow) / side), 0), last).astype(np.int64)
    hi = np.minimum(np.maximum(np.floor((position + grow) / side), 0), last).astype(np.int64)
    span = hi - lo + 1
    counts = span.prod(axis=1)
    point = np.repeat(np.arange(position.shape[0]), counts)
    # Which of its point's cells a pair is, as a mixed-radix number (last axis fastest).
    rank = np.arange(point.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cells = []
    for axis in reversed(range(position.shape[1])):
        width = span[point, axis]
        cells.append(lo[point, axis] + rank % width)
        rank //= width
    cube = np.ravel_multi_index(tuple(reversed(cells)), grid)
    # Points ascend already, so a stable sort by cube gives (cube, point) order; numpy sorts
    # 16-bit keys stably by radix, 10x faster than int64 keys (640k pairs: 1.6 against 15 ms).
    keys = cube.astype(np.uint16) if math.prod(grid) <= 2**16 else cube
    order = np.argsort(keys, kind="stable")
    return point[order], cube[order]


def _owner(position: np.ndarray, side: float, grid: tuple[int, ...]) -> np.ndarray:
    """The cube (flat index) whose own box holds each ``position``."""
    cell = np.clip(np.floor(position / side), 0, np.asarray(grid) - 1).astype(np.int64)
    return np.ravel_multi_index(tuple(cell.T), grid)


@dataclass(frozen=True)
class _Cube:
    """Mean-shift's ``inside``: whether vectors lie in cube ``index`` (by their positional part)."""

    index: int
    d: int
    side: float
    grid: tuple[int, ...]

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return _owner(vectors[:, :self.d].astype(np.float64), self.side, self.grid) == self.index


def _merge_across(modes: np.ndarray, support: np.ndarray, radius: float) -> np.ndarray:
    """Indices of the modes kept by greedy suppression (strongest first, ties in input order):
    a mode within ``radius`` (strictly) of a kept stronger one is dropped, as in mean_shift."""
    from scipy.spatial import cKDTree

    order = np.argsort(-support, kind="stable")
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    tree = cKDTree(modes.astype(np.float64))
    neighbours = tree.query_ball_point(modes.astype(np.float64), np.nextafter(radius, 0.0))
    kept = np.zeros(order.size, bool)
    for i in order:
        kept[i] = not any(kept[j] and rank[j] < rank[i] for j in neighbours[i])
    return order[kept[order]]


def _blockwise(first: _Sample, density: float, scales: tuple[float, ...], shape: tuple[int, ...],
               bandwidth: float, fg_threshold: float, side: float, run: dict) -> Clustering:
    """Modes cube by cube from the sample points with keys below ``density`` (module docstring)."""
    from scipy.spatial import cKDTree

    _, index, keys, vectors = first
    keep = keys < density
    index, vectors = index[keep], vectors[keep]
    order = np.argsort(index, kind="stable")  # raster order: independent of the chunking
    vectors = np.ascontiguousarray(vectors[order])
    d, dim = len(scales), vectors.shape[1]
    # Cubes along the positional channels, enough to cover the image's positions.
    extent = [s * n for s, n in zip(scales, shape[len(shape) - d:])]
    grid = tuple(max(1, math.ceil(e / side)) for e in extent)
    if vectors.shape[0] == 0:  # a foreground too small for one point at this density
        return Clustering(np.zeros((0, dim), np.float32), bandwidth, fg_threshold, True, None, 0, math.prod(grid))
    position = vectors[:, :d].astype(np.float64)
    point, cube = _cubes(position, side, _halo(bandwidth, run["kernel"]), grid)
    bounds = np.searchsorted(cube, np.arange(math.prod(grid) + 1))
    # Seeds in proportion to the points a cube owns (_SEED_SHARE): a fixed n_seeds per cube
    # would seed a small cube so densely that tails and plateaus get modes of their own.
    owned = np.bincount(_owner(position, side, grid), minlength=math.prod(grid))
    seeds = np.minimum(run["n_seeds"], np.maximum(1, np.ceil(run["seed_share"] * owned))).astype(int)
    found, support = [], []
    for c in range(math.prod(grid)):
        members = point[bounds[c]:bounds[c + 1]]
        if members.size == 0:
            continue
        points = vectors[members]
        # A seed per cube from the run's seed and the cube: the cubes are fixed in embedding
        # space, so this too is independent of the chunking.
        modes = mean_shift(points, bandwidth, n_seeds=int(seeds[c]), seed=run["seed"] * 1_000_003 + c,
                           kernel=run["kernel"], device=run["device"], inside=_Cube(c, d, side, grid))
        if modes.shape[0]:
            found.append(modes)
            support.append(cKDTree(points.astype(np.float64)).query_ball_point(
                modes.astype(np.float64), bandwidth, return_length=True))
    if not found:
        return Clustering(np.zeros((0, dim), np.float32), bandwidth, fg_threshold, True, None,
                          int(vectors.shape[0]), math.prod(grid))
    modes, counts = np.concatenate(found), np.concatenate(support).astype(np.float64)
    kept = _merge_across(modes, counts, bandwidth)
    return Clustering(np.ascontiguousarray(modes[kept], np.float32), bandwidth, fg_threshold, True, None,
                      int(vectors.shape[0]), math.prod(grid))


# --------------------------------------------------------------------------- step 2: assignment


def _assign_block(block, modes, threshold, foreground, background):
    """Cluster id (1..K, 0 = background) of every voxel of one embeddings block."""
    flat = np.asarray(block).reshape(block.shape[0], -1)
    out = np.zeros(flat.shape[1], np.int32)
    mask = flat[-1] > threshold if foreground else np.ones(flat.shape[1], bool)
    if modes.shape[0] and mask.any():
        points = np.ascontiguousarray((flat[:-1] if foreground else flat)[:, mask].T, np.float32)
        ids = assign_to_modes(points, modes).astype(np.int32)
        if background is not None:
            ids[ids == background + 1] = 0
        out[mask] = ids
    return out.reshape(block.shape[1:])


def assign_clusters(embeddings, clustering: Clustering) -> da.Array:
    """Lazy int32 cluster id of every voxel (0 = background), block by block."""
    if not isinstance(clustering, Clustering):
        raise TypeError(f"clustering must be a Clustering, got {type(clustering).__name__}")
    emb = _embeddings(embeddings, clustering.foreground)
    dim = emb.shape[0] - int(clustering.foreground)
    if clustering.modes.shape[0] and clustering.modes.shape[1] != dim:
        raise ShiftSegError(
            f"the clustering has {clustering.modes.shape[1]}-D modes but the embeddings have "
            f"{dim} embedding channels; cluster these embeddings again"
        )
    threshold = _logit(clustering.fg_threshold)
    return da.map_blocks(_assign_block, emb, clustering.modes, threshold, clustering.foreground,
                         clustering.background, drop_axis=0, dtype=np.int32,
                         meta=np.empty((0,) * (emb.ndim - 1), np.int32))
