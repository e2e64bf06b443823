"""Steps 1 and 2 of embeddings -> instances (:mod:`napari_shiftseg.inference.instances` has the whole
story): mean-shift on a subsample of the whole image's foreground, then the nearest mode
(*cluster*) of every voxel, block by block.

The subsample is drawn chunk by chunk (each chunk contributes foreground voxels in proportion to
its size), so a dask or zarr volume is streamed once and never held in memory; a tile alone is
never clustered (it does not see all clusters).
"""

from __future__ import annotations

import math
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

__all__ = ["ClusterOptions", "Clustering", "DEFAULT_BANDWIDTH", "DEFAULT_MAX_POINTS", "assign_clusters",
           "cluster_embeddings", "sample_foreground"]

# Half the push margin 2·delta_d = 6 of the reference loss (train.LOSS_DEFAULTS): clusters
# trained apart by >= 6 are separated, and pulled-in clusters (delta_v = 0.5) fit well inside.
DEFAULT_BANDWIDTH = 2.0
# Points mean-shift works on: seeds x points distances per step, 1000 x 50k is ~0.1 s on a CPU.
DEFAULT_MAX_POINTS = 50_000



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
    return da.from_array(array, chunks=chunks, asarray=True)


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
    """

    modes: np.ndarray = field(repr=False)
    bandwidth: float
    fg_threshold: float = 0.5
    foreground: bool = True
    background: int | None = None
    n_points: int = 0

    @property
    def n_clusters(self) -> int:
        """Number of modes that become instances (the background mode excluded)."""
        return int(self.modes.shape[0]) - (self.background is not None)

    def to_dict(self) -> dict:
        """JSON-able form (stored in the output zarr's attributes)."""
        return {"modes": self.modes.tolist(), "bandwidth": self.bandwidth,
                "fg_threshold": self.fg_threshold, "foreground": self.foreground,
                "background": self.background, "n_points": self.n_points}

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
    shape = tuple(emb.shape[1:])
    total = math.prod(shape)
    threshold = _logit(number(fg_threshold, "fg_threshold", 0.0, 1.0))
    dim = emb.shape[0] - int(foreground)
    blocks = emb.to_delayed()
    origins = [np.cumsum((0,) + c[:-1]) for c in emb.chunks[1:]]

    def read(below: float):
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

    below = min(1.0, _FIRST_READ_MARGIN * max_points / max(total, 1))
    n_foreground, index, keys, vectors = read(below)
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


def cluster_embeddings(embeddings, bandwidth: float = DEFAULT_BANDWIDTH, fg_threshold: float = 0.5,
                       foreground: bool = True, options: ClusterOptions | None = None,
                       kernel: str = "flat", device: str = "cpu", compute=None,
                       **overrides) -> Clustering:
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
        name (``n_seeds=200``). Its ``connectivity`` is for labelling, not used here.
    kernel : {'flat', 'gaussian'}
        Mean-shift kernel.
    device : str
        Where mean-shift runs ('cpu', 'cuda').
    compute : callable, optional
        ``compute(*delayed) -> results`` that reads the subsample (default :func:`dask.compute`;
        e.g. one bound to a dask.distributed client).

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
    points = sample_foreground(embeddings, max_points, fg_threshold, foreground, seed, compute)
    if points.shape[0] == 0:
        modes = np.zeros((0, points.shape[1]), np.float32)
        return Clustering(modes, bandwidth, fg_threshold, foreground, None, 0)
    modes = mean_shift(points, bandwidth, n_seeds=n_seeds, seed=seed, kernel=kernel, device=device)
    background = None
    if not foreground and modes.shape[0]:
        counts = np.bincount(assign_to_modes(points, modes), minlength=modes.shape[0] + 1)[1:]
        background = int(np.argmax(counts))
    return Clustering(modes, bandwidth, fg_threshold, foreground, background, int(points.shape[0]))


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
