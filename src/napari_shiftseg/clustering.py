"""Steps 1 and 2 of embeddings -> instances (:mod:`napari_shiftseg.instances` has the whole
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

from ._errors import ShiftSegError
from ._options import with_overrides
from .meanshift import assign_to_modes, mean_shift
from .validate import number, whole

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

    n_seeds, max_points, seed : as for :func:`~napari_shiftseg.instances.cluster_embeddings`.
    connectivity : as for :func:`~napari_shiftseg.instances.label_instances` (1 = faces).
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
        (a :class:`~napari_shiftseg.settings.SegmentationSettings`) plus these."""
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


def _sample_block(block, quota: int, threshold: float, foreground: bool, seed: int, index):
    """Up to ``quota`` random foreground embedding vectors (rows) of one block."""
    flat = np.asarray(block).reshape(block.shape[0], -1)
    if foreground:
        candidates = np.flatnonzero(flat[-1] > threshold)
        flat = flat[:-1]
    else:
        candidates = np.arange(flat.shape[1])
    if candidates.size > quota:
        # Seeded per block (not per run order) so every scheduler draws the same sample.
        rng = np.random.default_rng([seed, *index])
        candidates = np.sort(rng.choice(candidates, size=quota, replace=False))
    return np.ascontiguousarray(flat[:, candidates].T, dtype=np.float32)


def sample_foreground(embeddings, max_points: int = DEFAULT_MAX_POINTS, fg_threshold: float = 0.5,
                      foreground: bool = True, seed: int = 0, compute=None) -> np.ndarray:
    """Random foreground embedding vectors of the whole image, drawn chunk by chunk.

    Each chunk contributes at most ``ceil(max_points · chunk voxels / all voxels)`` of its
    foreground voxels (all of them if it has fewer), so the sample is spread over the whole
    volume and only the sample is ever in memory.

    Returns
    -------
    numpy.ndarray
        (N, E) float32, N <= max_points + number of chunks.
    """
    emb = _embeddings(embeddings, foreground)
    max_points = whole(max_points, "max_points", 1)
    total = math.prod(emb.shape[1:])
    threshold = _logit(number(fg_threshold, "fg_threshold", 0.0, 1.0))
    blocks = emb.to_delayed()
    tasks = []
    for index in np.ndindex(blocks.shape):
        size = math.prod(emb.chunks[axis][i] for axis, i in enumerate(index))
        quota = math.ceil(max_points * size / total)
        tasks.append(dask.delayed(_sample_block, pure=True)(
            blocks[index], quota, threshold, foreground, seed, index[1:]))
    parts = (compute or dask.compute)(*tasks)
    dim = emb.shape[0] - int(foreground)
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


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
        :func:`~napari_shiftseg.meanshift.mean_shift` seeds again where no mode covers), ``max_points``
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
