"""Seeded mean-shift clustering of embeddings in torch, and nearest-mode assignment.

:func:`mean_shift` finds the modes of the embedding density: a few hundred to a thousand seeds
(random embedding vectors, as in the reference; then more from the points no mode covers)
climb the density together, each step moving every seed to the kernel-weighted mean of the
points around it. All seeds are updated in one batched computation, and distances are computed
in chunks of points so memory stays bounded for millions of pixels. :func:`assign_to_modes`
then gives every point the label of its nearest mode; it is a pure function of (points, modes),
so it can run block by block on a dask array once the modes of the whole image are known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.util._options import with_overrides
from napari_shiftseg.util.validate import number, whole

__all__ = ["MeanShiftOptions", "assign_to_modes", "mean_shift"]

_KERNELS = ("flat", "gaussian")

# Points per distance chunk. A chunk costs (seeds x chunk) floats: 1000 seeds x 4096 points
# is 16 MB, which stays in cache better than larger chunks (measured: 1024-8192 are equally
# fast on CPU, 16384 is 25% slower) while keeping the matrix products efficient.
DEFAULT_CHUNK_SIZE = 4096

# Distances per chunk in assign_to_modes when no chunk size is given (16 MB of float32).
# Few modes mean many points per chunk: every chunk costs a dozen small torch operations, and
# on a busy machine each multi-threaded operation can wait a scheduler time slice.
_ASSIGN_CHUNK_ELEMENTS = 2**22

# From this many modes on, assign_to_modes finds each point's nearest mode with a k-d tree over
# the modes (log K per point) instead of measuring all K: the modes grow with the volume, so
# brute force grows with its square (issue 27). Below it brute force is as fast.
_TREE_MIN_MODES = 256
# Points per k-d tree query (float64 copies of 65,536 points: a few MB).
_TREE_CHUNK = 2**16
# _assign_local: points sampled to size the first neighbourhood, its reach in multiples of
# their largest distance to a mode inside the points' box, and the share of the modes above
# which the neighbourhood is not worth cutting out (free embeddings: every mode is near).
_LOCAL_SAMPLE = 256
_LOCAL_REACH = 1.5
_LOCAL_SHARE = 0.5
# ... and from how many modes of a neighbourhood on its tree beats brute force (110k points of
# a 64^3 block against ~230 modes: 0.07 s brute force, 0.02 s by tree).
_SUBSET_TREE_MIN = 16
# Relative gap (of squared distances) under which the tree's two nearest modes, or the nearest
# and max_distance, count as a near-tie that float32 rounding in the brute-force arithmetic
# (relative error ~1e-6 for a few dimensions) could decide differently: measured brute force.
_TIE_TOLERANCE = 1e-4

# Re-seeding (see _cover) must find the nuclei random seeds missed without cutting found ones
# apart: seeds drawn among uncovered points include the tails of spread-out clusters and
# stragglers between clusters. Measured on the crowded dev images (each new mode labelled by
# the nucleus it covers): modes of missed nuclei have 0.4-1.2 of the typical support and sit
# 1.6-2.7 bandwidths from the nearest mode; tail modes have 0.1-0.4 at 1.1-1.7. So a point is
# uncovered only beyond COVER_RADIUS bandwidths from every mode (the far side of a missed
# nucleus is, a tail is mostly not), and a new mode needs RESEED_SHARE of the first round's
# median support. Dev sets (bench_real.py --sets dev2d dev3d; 2D merge distance 2):
#   share / radius   0.2 / 1   0.3 / 1   0.5 / 1   0.2 / 1.5   0.3 / 1.5   0.2 / 2   0.3 / 2
#   dev2d            0.898     0.905     0.901     0.904       0.909       0.913     0.913
#   dev3d            0.963     0.955     0.916     0.962       0.953       0.951     0.944
# and 2D false splits fall from 80 (0.2 / 1) to 44 (0.2 / 2) of 1351 nuclei.
RESEED_SHARE = 0.2
COVER_RADIUS = 2.0

# Seeds closer than this (relative to the bandwidth, per grid cell) are merged while iterating.
_DEDUPE_CELL = 1 / 16


def _as_points(points, name: str, dtype=None) -> torch.Tensor:
    """Validate an (N, E) numpy array or tensor of finite numbers; return it as a tensor.

    Floating inputs keep their precision unless ``dtype`` is given; anything else becomes
    float32. The tensor may share memory with the input, so callers must not write to it.
    """
    if isinstance(points, torch.Tensor):
        tensor = points.detach()
    elif isinstance(points, np.ndarray):
        if points.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got dtype {points.dtype}")
        # from_numpy warns on read-only arrays (dask and zarr chunks often are); copy those.
        tensor = torch.from_numpy(points if points.flags.writeable else points.copy())
    else:
        raise TypeError(
            f"{name} must be a numpy array or torch tensor, got {type(points).__name__}"
        )
    if tensor.ndim != 2 or tensor.shape[1] == 0:
        raise ShiftSegError(
            f"{name} must be a 2-D array (N points, E embedding dimensions), "
            f"got shape {tuple(tensor.shape)}"
        )
    if dtype is None:
        dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    tensor = tensor.to(dtype)
    # A finite sum proves every value finite and is several times cheaper than isfinite();
    # only an infinite sum (NaN/inf, or an overflow) needs the element-wise check.
    if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        raise ShiftSegError(f"{name} contains NaN or infinite values")
    return tensor


def _chunks(n: int, chunk_size: int):
    """Yield slices of ``chunk_size`` covering range(n)."""
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _cells(points: torch.Tensor, cell: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Group points by the cell of a grid of spacing ``cell`` that they fall in.

    Returns ``(inverse, counts)``: the group (0..G-1) of every point, groups sorted by cell,
    and the number of points per group.
    """
    cells = torch.floor((points - points.min(dim=0).values) / cell).to(torch.int64)
    extent = (cells.max(dim=0).values + 1).tolist()
    if float(np.prod(extent, dtype=np.float64)) >= 2.0**62:
        # Too many cells for a scalar key: sort the rows themselves (slower).
        return torch.unique(cells, dim=0, return_inverse=True, return_counts=True)[1:]
    # A scalar mixed-radix key makes unique() a fast 1-D sort.
    key = cells[:, 0]
    for axis in range(1, cells.shape[1]):
        key = key * extent[axis] + cells[:, axis]
    return torch.unique(key, return_inverse=True, return_counts=True)[1:]


def _bin_points(points: torch.Tensor, bin_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace points by the means of the occupied cells of a grid, with their counts.

    Returns ``(centres, counts)`` of shapes (M, E) and (M,), M <= N.
    """
    inverse, counts = _cells(points, bin_size)
    # Summed in float64: a dense cell can hold 10^5 points, enough for float32 round-off
    # in a sequential sum to move its mean visibly.
    sums = torch.zeros(counts.shape[0], points.shape[1], dtype=torch.float64, device=points.device)
    sums.index_add_(0, inverse, points.to(torch.float64))
    return (sums / counts[:, None]).to(points.dtype), counts.to(points.dtype)


def _kernel_sums(
    seeds: torch.Tensor,
    centres: torch.Tensor,
    weighted: torch.Tensor,
    bandwidth: float,
    kernel: str,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel-weighted sums of the points around every seed, and the total weights.

    ``centres`` (M, E) are the (binned) points and ``weighted`` (M, E + 1) holds
    ``[count * centre, count]`` per centre, so that one matrix product gives both the weighted
    sums and the total weights. Returns ``(sums, weights)`` of shapes (S, E) and (S,); for the
    flat kernel ``weights`` is the number of points within ``bandwidth`` (the support).
    """
    seed_sq = seeds.square().sum(dim=1, keepdim=True)
    # |s - c|^2 = |s|^2 + (-2 s.c + |c|^2): the bracket is one product of [s, 1] with
    # [-2c, |c|^2], and |s|^2 moves to the other side of the comparison, so each chunk costs
    # a single pass over the (seeds x chunk) matrix besides the products. The data are
    # centred at their mean (see mean_shift), which keeps the cancellation error far below
    # the bandwidth.
    seeds_1 = torch.cat([seeds, torch.ones_like(seed_sq)], dim=1)
    centres_q = torch.cat([-2.0 * centres, centres.square().sum(dim=1, keepdim=True)], dim=1)
    threshold = bandwidth**2 - seed_sq
    acc = seeds.new_zeros(seeds.shape[0], weighted.shape[1])
    for part in _chunks(centres.shape[0], chunk_size):
        partial = seeds_1 @ centres_q[part].T
        if kernel == "flat":
            # In-place comparison keeps the float dtype: 1.0 inside the window, 0.0 outside.
            w = partial.le_(threshold)
        else:
            w = partial.add_(seed_sq).clamp_(min=0.0).mul_(-0.5 / bandwidth**2).exp_()
        acc.addmm_(w, weighted[part])
    return acc[:, :-1], acc[:, -1]


def _dedupe(seeds: torch.Tensor, active: torch.Tensor, cell: float):
    """Keep one seed per grid cell of size ``cell`` (the first one, for determinism)."""
    inverse, counts = _cells(seeds, cell)
    index = torch.arange(seeds.shape[0], device=seeds.device)
    first = torch.full_like(counts, seeds.shape[0]).scatter_reduce(0, inverse, index, "amin")
    return seeds[first], active[first]


@dataclass(frozen=True)
class MeanShiftOptions:
    """How :func:`mean_shift` iterates and merges (the knobs rarely changed).

    kernel : {'flat', 'gaussian'}
        'flat' weights all points within ``bandwidth`` equally (as scikit-learn does);
        'gaussian' weights every point by ``exp(-d^2 / (2 bandwidth^2))``.
    max_iter : int
        Maximum number of mean-shift steps.
    tol : float
        Convergence threshold, relative to ``bandwidth``.
    merge_radius : float, optional
        Modes closer than this are merged. Defaults to ``bandwidth``, as in scikit-learn: two
        flat-kernel modes closer than one bandwidth share most of their window, so the weaker
        one is a plateau or a stalled seed rather than a separate cluster.
    min_cluster_size : int
        Modes with fewer than this many points within ``bandwidth`` are dropped.
    bin_size : float or None
        Grid cell size relative to ``bandwidth``. The points are first replaced by the means
        of the occupied grid cells, weighted by their counts: tight embedding clusters
        collapse into a few thousand cells, which makes the iterations many times cheaper
        (6-20x measured on 200k 3-D points). Each point moves by less than a cell
        diagonal, so only points near a window's edge can be counted on the wrong side; the
        modes move by a small fraction of a cell and the support (hence
        ``min_cluster_size``) is counted per cell. None uses every point exactly. In high
        dimensions (E > 4) most cells hold a single point and binning gains little.
    chunk_size : int
        Points (or cells) per distance chunk; the distance matrices take about
        ``4 * n_seeds * chunk_size`` bytes.
    reseed_rounds : int
        With random seeds: at most this many further rounds of up to ``n_seeds`` seeds drawn
        from the points no mode covers yet (farther than ``COVER_RADIUS`` bandwidths from
        every mode), so that images with more objects than seeds still get one mode per object.
        0 keeps the first round only (the reference's behaviour).
    """

    kernel: str = "flat"
    max_iter: int = 50
    tol: float = 1e-3
    merge_radius: float | None = None
    min_cluster_size: int = 1
    bin_size: float | None = 0.25
    chunk_size: int = DEFAULT_CHUNK_SIZE
    reseed_rounds: int = 10

    def __post_init__(self):
        number(self.tol, "tol", 0.0)
        number(self.merge_radius, "merge_radius", 0.0, optional=True)
        number(self.bin_size, "bin_size", 0.0, optional=True)
        whole(self.max_iter, "max_iter", 1)
        whole(self.min_cluster_size, "min_cluster_size", 1)
        whole(self.chunk_size, "chunk_size", 1)
        whole(self.reseed_rounds, "reseed_rounds", 0)
        if self.kernel not in _KERNELS:
            raise ShiftSegError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}")


def mean_shift(
    points,
    bandwidth: float,
    n_seeds: int = 1000,
    seeds=None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    options: MeanShiftOptions | None = None,
    inside: Callable[[np.ndarray], np.ndarray] | None = None,
    **overrides,
) -> np.ndarray:
    """Find the modes of a point cloud by seeded mean-shift.

    Every seed repeatedly moves to the kernel-weighted mean of the points around it until it
    moves less than ``tol * bandwidth`` (or ``max_iter`` steps have been taken). Converged seeds
    are then merged greedily, strongest first: a mode closer than ``merge_radius`` to an
    already kept mode with more support is dropped (as in scikit-learn's ``MeanShift``). The
    support of a mode is the number of points within ``bandwidth`` of it.

    Parameters
    ----------
    points : numpy.ndarray or torch.Tensor
        (N, E) finite embedding vectors, N >= 1.
    bandwidth : float
        Kernel radius (flat kernel) or standard deviation (Gaussian kernel), > 0. For
        embeddings trained with the discriminative loss, about ``delta_d`` or a little less.
    n_seeds : int
        Number of seeds drawn at random (without replacement) from the points when ``seeds``
        is None; capped at N. Points that no mode then covers are seeded again, up to
        ``n_seeds`` per round (``reseed_rounds``), so an image with more objects than seeds
        still gets a mode per object.
    seeds : numpy.ndarray or torch.Tensor, optional
        (S, E) explicit starting points; overrides ``n_seeds`` and ``seed``.
    seed : int
        Seed of the random choice of seeds; equal seeds give identical modes.
    device : str or torch.device
        Where to compute ('cpu', 'cuda', ...).
    options : MeanShiftOptions, optional
        Kernel, iterations, tolerance, merge radius, smallest cluster, binning, chunking.
    inside : callable, optional
        The region this call is responsible for, when the points are one region of a larger
        cloud plus a halo around it (blockwise mean-shift): ``inside(x)`` takes (K, E) float
        vectors and says (bool, K) which lie in the region. Then seeds are drawn only from points
        inside, only those need a mode to cover them, and modes outside are dropped *before*
        merging, so a mode cut short by the halo's edge can neither be returned nor suppress a
        mode of the region.
    **overrides
        Fields of ``options`` to change, by name (``kernel="gaussian"``, ``bin_size=None``).

    Returns
    -------
    numpy.ndarray
        (K, E) float32 modes, sorted by decreasing support (K may be 0 if ``min_cluster_size``
        removes every mode).

    Raises
    ------
    ShiftSegError
        For empty, non-finite or wrongly shaped points or seeds, and for invalid parameters.
    TypeError
        If ``points`` or ``seeds`` is not a numpy array or torch tensor.

    Notes
    -----
    Three things make this fast without changing what is computed beyond the ``bin_size``
    approximation: all active seeds move in one batched matrix product per chunk of points;
    seeds that have converged stop; and seeds that fall into the same cell of a grid of
    ``bandwidth / 16`` are merged before every step, since from there on they would climb to
    the same mode (1000 random seeds on 30 clusters shrink to about 30 within three steps).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> points = np.concatenate([rng.normal(0, 0.3, (500, 3)), rng.normal(5, 0.3, (500, 3))])
    >>> modes = mean_shift(points, bandwidth=1.0)
    >>> modes.shape
    (2, 3)
    >>> labels = assign_to_modes(points, modes)  # 1 or 2 for every point
    """
    number(bandwidth, "bandwidth", 0.0)
    whole(n_seeds, "n_seeds", 1)
    o = with_overrides(options or MeanShiftOptions(), "mean_shift", overrides)
    kernel, max_iter, tol, merge_radius = o.kernel, o.max_iter, o.tol, o.merge_radius
    min_cluster_size, bin_size, chunk_size = o.min_cluster_size, o.bin_size, o.chunk_size
    data = _as_points(points, "points", torch.float32).to(device)
    if data.shape[0] == 0:
        raise ShiftSegError("cannot run mean-shift on an empty set of points")
    if seeds is None:
        rng = np.random.default_rng(seed)
        if inside is None:
            index = rng.choice(data.shape[0], size=min(n_seeds, data.shape[0]), replace=False)
        else:
            eligible = np.flatnonzero(_region_mask(inside, data))
            if eligible.size == 0:
                return np.zeros((0, data.shape[1]), np.float32)
            index = eligible[rng.choice(eligible.size, size=min(n_seeds, eligible.size), replace=False)]
        current = data[torch.from_numpy(np.sort(index)).to(data.device)]
    else:
        current = _as_points(seeds, "seeds", torch.float32).to(device)
        if current.shape[0] == 0 or current.shape[1] != data.shape[1]:
            raise ShiftSegError(
                f"seeds must have shape (S >= 1, {data.shape[1]}) to match the points, "
                f"got {tuple(current.shape)}"
            )
    bandwidth = float(bandwidth)
    merge_radius = bandwidth if merge_radius is None else float(merge_radius)

    # Centring keeps |x|^2 small, so the addmm distances in _kernel_sums stay accurate.
    origin = data.mean(dim=0)
    data = data - origin
    current = current - origin
    if bin_size is None:
        centres, counts = data, torch.ones_like(data[:, 0])
    else:
        centres, counts = _bin_points(data, bin_size * bandwidth)
    weighted = torch.cat([centres * counts[:, None], counts[:, None]], dim=1)

    climb = dict(centres=centres, weighted=weighted, bandwidth=bandwidth, kernel=kernel,
                 max_iter=max_iter, tol=tol, chunk_size=chunk_size)
    keep = None if inside is None else (lambda x: _region_mask(inside, x + origin))
    current = _climb(current, **climb)
    if keep is not None:
        current = current[keep(current)]
    modes = _merge_modes(current, _support(current, climb), merge_radius, min_cluster_size)
    if seeds is None:
        modes = _cover(modes, rng, n_seeds, o.reseed_rounds, counts, merge_radius,
                       min_cluster_size, climb, keep)
    return (modes + origin).cpu().numpy().astype(np.float32)


def _region_mask(inside: Callable[[np.ndarray], np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """``inside`` (a numpy callable) applied to a tensor of vectors, as a mask on its device."""
    mask = np.asarray(inside(x.cpu().numpy()), dtype=bool)
    if mask.shape != (x.shape[0],):
        raise ShiftSegError(f"inside() must return one bool per vector, got shape {mask.shape}")
    return torch.from_numpy(mask).to(x.device)


def _climb(current, centres, weighted, bandwidth, kernel, max_iter, tol, chunk_size):
    """Move every seed uphill until it converges; returns the (deduplicated) end points."""
    active = torch.ones(current.shape[0], dtype=torch.bool, device=current.device)
    for _ in range(max_iter):
        # Seeds that meet follow (almost) the same path from then on; keeping one per small
        # cell turns the 1000 seeds into about one per cluster after a few steps.
        current, active = _dedupe(current, active, _DEDUPE_CELL * bandwidth)
        sums, weights = _kernel_sums(
            current[active], centres, weighted, bandwidth, kernel, chunk_size
        )
        # A seed with no point in its window (only possible for explicit seeds, or a Gaussian
        # underflow far from all data) has no mean to move to: keep it where it is, its
        # support of 0 drops it below.
        moved = torch.where(
            weights[:, None] > 0, sums / weights.clamp(min=1e-30)[:, None], current[active]
        )
        shift = torch.linalg.vector_norm(moved - current[active], dim=1)
        current[active] = moved
        active[active.clone()] = shift >= tol * bandwidth
        if not bool(active.any()):
            break
    return current


def _support(current, climb):
    """Number of (binned) points within one bandwidth of each of ``current``."""
    return _kernel_sums(current, climb["centres"], climb["weighted"], climb["bandwidth"], "flat",
                        climb["chunk_size"])[1]


def _cover(modes, rng, n_seeds, rounds, counts, merge_radius, min_cluster_size, climb, keep=None):
    """Seed again from the points no mode covers, until every point is explained.

    Random seeds miss clusters: with K equally large clusters, 1000 seeds leave a share of
    about exp(-1000 / K) of them seedless (28 % of the 794 nuclei of a crowded dev volume),
    and their voxels then join the nearest mode, i.e. a touching neighbour. So every point
    farther than ``COVER_RADIUS`` bandwidths from all modes, and farther than one bandwidth from
    every seed tried so far (a point that shares most of a tried seed's window would climb where
    it did), is a candidate for the next round; a new mode counts with ``RESEED_SHARE`` of the
    typical support (module constants, with the measurements behind them). With ``keep`` (a
    region, see mean_shift's ``inside``) only the points in the region need explaining, and new
    modes outside it are dropped.
    """
    if modes.shape[0] == 0:  # no cluster strong enough even for random seeds
        return modes
    centres, bandwidth, chunk = climb["centres"], climb["bandwidth"], climb["chunk_size"]
    explained = _near(centres, modes, COVER_RADIUS * bandwidth, chunk)
    if keep is not None:
        explained |= ~keep(centres)
    # Supports are kept with their modes and only the new modes' are computed, and each round
    # tests only the points still unexplained against the modes it added: the work per round
    # follows the new clusters, not all K of them (K grows with the volume: recomputing every
    # mode against every point each round made the clustering of 4000 nuclei grow x3.5 for a
    # doubled volume, issue 27). The result is the same: ``explained`` only ever grows, and
    # points near the modes kept from earlier rounds were explained in those rounds.
    support = _support(modes, climb)
    typical = float(support.median())
    for _ in range(rounds):
        candidates = torch.nonzero(~explained).flatten()
        if candidates.numel() == 0:
            break
        # Drawn like the first seeds: in proportion to how many points each (binned) centre holds.
        weight = counts[candidates].cpu().numpy().astype(np.float64)
        pick = np.sort(rng.choice(candidates.cpu().numpy(), size=min(n_seeds, candidates.numel()),
                                  replace=False, p=weight / weight.sum()))
        seeds = centres[torch.from_numpy(pick).to(centres.device)]
        new = _climb(seeds.clone(), **climb)
        if keep is not None:
            new = new[keep(new)]
        new_support = _support(new, climb)
        strong = new_support >= max(min_cluster_size, RESEED_SHARE * typical)
        new, new_support = new[strong], new_support[strong]
        fresh = new[:0]
        if new.shape[0]:
            n_old = modes.shape[0]
            modes, support, source = _merge_modes(torch.cat([modes, new]), torch.cat([support, new_support]),
                                                  merge_radius, min_cluster_size, with_support=True)
            fresh = modes[source >= n_old]
        todo = torch.nonzero(~explained).flatten()
        points = centres[todo]
        explained[todo] = (_near(points, fresh, COVER_RADIUS * bandwidth, chunk)
                           | _near(points, seeds, bandwidth, chunk))
    return modes


def _near(points, targets, radius, chunk_size):
    """Whether each point lies within ``radius`` of any target."""
    near = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    if targets.shape[0]:
        for part in _chunks(points.shape[0], chunk_size):
            near[part] = torch.cdist(points[part], targets).min(dim=1).values <= radius
    return near


def _merge_modes(modes, support, merge_radius, min_cluster_size, with_support: bool = False):
    """Drop weak modes and those within ``merge_radius`` of a stronger one (greedy). With
    ``with_support``: (modes, their supports, their indices in the input)."""
    source = torch.nonzero(support >= min_cluster_size).flatten()
    modes, support = modes[source], support[source]
    # Stable sort so that ties keep their (deterministic) order.
    order = torch.sort(support, descending=True, stable=True).indices
    modes, support, source = modes[order], support[order], source[order]
    close = (torch.cdist(modes, modes) < merge_radius).cpu().numpy()
    kept = np.zeros(modes.shape[0], dtype=bool)
    # Greedy suppression needs the decisions of all stronger modes first, hence the loop; it
    # runs over the few converged candidates, not over points.
    for i in range(modes.shape[0]):
        kept[i] = not close[i, :i][kept[:i]].any()
    kept_t = torch.from_numpy(kept).to(modes.device)
    if with_support:
        return modes[kept_t], support[kept_t], source[kept_t]
    return modes[kept_t]


def assign_to_modes(
    points,
    modes,
    max_distance: float | None = None,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Label every point with its nearest mode.

    Parameters
    ----------
    points : numpy.ndarray or torch.Tensor
        (N, E) finite embedding vectors (N may be 0).
    modes : numpy.ndarray or torch.Tensor
        (K, E) cluster centres, e.g. from :func:`mean_shift`.
    max_distance : float, optional
        Points further than this from their nearest mode get label 0.
    chunk_size : int, optional
        Points per distance chunk; by default as many as keep the (chunk x K) distance
        matrix at about 16 MB.
    device : str or torch.device
        Where to compute.

    Returns
    -------
    numpy.ndarray
        (N,) int64 labels: ``k + 1`` for the nearest mode ``modes[k]`` (ties go to the lower
        index), 0 where no mode is within ``max_distance`` or there are no modes.

    Raises
    ------
    ShiftSegError
        For wrongly shaped or non-finite inputs, or a non-positive ``max_distance``.
    TypeError
        If ``points`` or ``modes`` is not a numpy array or torch tensor.
    """
    number(max_distance, "max_distance", 0.0, optional=True)
    if chunk_size is not None:
        whole(chunk_size, "chunk_size", 1)
    data = _as_points(points, "points")
    centres = _as_points(modes, "modes", data.dtype).to(device)
    if centres.shape[1] != data.shape[1]:
        raise ShiftSegError(
            f"modes have {centres.shape[1]} embedding dimensions but points have {data.shape[1]}"
        )
    if centres.shape[0] == 0:
        return np.zeros(data.shape[0], dtype=np.int64)
    if centres.shape[0] >= _TREE_MIN_MODES and centres.device.type == "cpu" and chunk_size is None:
        return _assign_local(data, centres, max_distance)
    return _assign_brute_force(data, centres, max_distance, chunk_size, device)


def _box_distance(centres: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Euclidean distance of every centre to the box [low, high] (0 inside), float64."""
    gap = np.maximum(np.maximum(low - centres, centres - high), 0.0)
    return np.sqrt(np.square(gap).sum(axis=1))


def _bounds(data: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The points' bounding box, (low, high) in float64 (exact for float32 points)."""
    return data.min(dim=0).values.double().numpy(), data.max(dim=0).values.double().numpy()


def _assign_subset(data: torch.Tensor, centres: torch.Tensor, near: np.ndarray, max_distance):
    """(labels over all centres, nearest distance) of ``data`` measured against ``centres[near]``
    only (``near`` ascending, so ties still go to the lower index)."""
    subset = centres[torch.from_numpy(near)]
    if near.size >= _SUBSET_TREE_MIN:
        labels, nearest = _assign_by_tree(data, subset, max_distance, with_distance=True)
    else:
        labels, nearest = _assign_brute_force(data, subset, max_distance, None, "cpu", with_distance=True)
    return np.concatenate([[0], near + 1])[labels], nearest


def _assign_local(data: torch.Tensor, centres: torch.Tensor, max_distance) -> np.ndarray:
    """The labels of :func:`_assign_brute_force`, measuring only the modes near the points.

    A block of a spatial embedding sees a few hundred of the image's modes; the others lie far
    away in the positional channels, and measuring them all makes the cost of a block grow with
    the image's mode count (a k-d tree over all K modes per block: K log K each; issue 27). The
    rule, exact whatever the data:

    1. ``reach`` is 1.5x the largest distance of a sample of the points to the modes inside the
       points' bounding box (each such distance bounds the sampled point's nearest-mode
       distance from above). The modes within ``reach`` of the box (box distance, float64) are
       measured; a point whose nearest of them is closer than ``reach`` (less a rounding
       margin) has it as its nearest of all: every other mode is further than ``reach``.
    2. The remaining points: their nearest measured mode is at most ``r`` away (their largest
       such distance), so their nearest of all lies within ``r`` of their box: those modes are
       measured, and that is exact.

    Same labels as brute force, ties and ``max_distance`` included. Without modes inside the
    box, or when the neighbourhood holds most modes anyway (free embeddings), every mode is
    measured with one tree.
    """
    n = data.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    modes = centres.double().numpy()
    box = _box_distance(modes, *_bounds(data))
    inside = np.flatnonzero(box == 0.0)
    if inside.size == 0:
        return _assign_by_tree(data, centres, max_distance)
    sample = data[:: max(1, n // _LOCAL_SAMPLE)]
    reach = _LOCAL_REACH * float(_assign_subset(sample, centres, inside, None)[1].max())
    near = np.flatnonzero(box <= reach)
    if near.size > _LOCAL_SHARE * modes.shape[0]:
        return _assign_by_tree(data, centres, max_distance)
    labels, nearest = _assign_subset(data, centres, near, max_distance)
    # The margin keeps float32 rounding in brute force's arithmetic from calling a mode just
    # beyond reach a tie (as _TIE_TOLERANCE does for the tree's two nearest).
    unsure = np.flatnonzero(~(nearest < reach * (1.0 - _TIE_TOLERANCE)))
    if unsure.size:
        rest = data[torch.from_numpy(unsure)]
        radius = float(nearest[unsure].max()) * (1.0 + _TIE_TOLERANCE)
        around = np.flatnonzero(_box_distance(modes, *_bounds(rest)) <= radius)
        labels[unsure] = _assign_subset(rest, centres, around, max_distance)[0]
    return labels


def _assign_brute_force(data, centres, max_distance, chunk_size, device, with_distance: bool = False):
    labels = np.zeros(data.shape[0], dtype=np.int64)
    distances = np.zeros(data.shape[0], dtype=np.float64)
    if chunk_size is None:
        chunk_size = max(1, _ASSIGN_CHUNK_ELEMENTS // centres.shape[0])
    for part in _chunks(data.shape[0], chunk_size):
        chunk = data[part].to(device)
        # Squared distances summed axis by axis: the same arithmetic as a brute-force argmin
        # (no |a|^2 + |b|^2 - 2ab shortcut, whose rounding could flip near-ties), and faster
        # on CPU than cdist's exact mode.
        sq_dist = (chunk[:, :1] - centres[:, 0]).square_()
        for axis in range(1, chunk.shape[1]):
            sq_dist += (chunk[:, axis : axis + 1] - centres[:, axis]).square_()
        nearest, index = sq_dist.min(dim=1)
        chunk_labels = index + 1
        if max_distance is not None:
            chunk_labels[nearest.sqrt() > max_distance] = 0
        labels[part] = chunk_labels.cpu().numpy()
        if with_distance:
            distances[part] = nearest.sqrt().double().cpu().numpy()
    return (labels, distances) if with_distance else labels


def _assign_by_tree(data: torch.Tensor, centres: torch.Tensor, max_distance, with_distance: bool = False):
    """The labels of :func:`_assign_brute_force`, from a k-d tree over the modes.

    The tree gives each point its two nearest modes in float64. Where the second is clearly
    further than the first (and the first clearly on one side of ``max_distance``), the
    brute-force argmin, whose float32 rounding is far smaller than that gap, picks the same
    mode. The few near-ties (equal distances, duplicated modes) and near-threshold points are
    measured by brute force, so the labels are identical, ties to the lower index included.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(centres.double().numpy())
    labels = np.zeros(data.shape[0], dtype=np.int64)
    distances = np.zeros(data.shape[0], dtype=np.float64)
    for part in _chunks(data.shape[0], _TREE_CHUNK):
        points = data[part].double().numpy()
        distance, index = tree.query(points, k=2)
        d1, d2 = distance[:, 0], distance[:, 1]
        distances[part] = d1
        unsure = d2 * d2 - d1 * d1 <= _TIE_TOLERANCE * d2 * d2
        chunk_labels = index[:, 0] + 1
        if max_distance is not None:
            chunk_labels[d1 > max_distance] = 0
            unsure |= np.abs(d1 - max_distance) <= _TIE_TOLERANCE * max_distance
        if unsure.any():
            rows = torch.from_numpy(np.flatnonzero(unsure))
            chunk_labels[unsure] = _assign_brute_force(data[part][rows], centres, max_distance,
                                                       None, "cpu")
        labels[part] = chunk_labels
    return (labels, distances) if with_distance else labels
