"""Seeded mean-shift clustering of embeddings in torch, and nearest-mode assignment.

:func:`mean_shift` finds the modes of the embedding density: a few hundred to a thousand seeds
(random embedding vectors, as in the reference) climb the density together, each step moving
every seed to the kernel-weighted mean of the points around it. All seeds are updated in one
batched computation, and distances are computed in chunks of points so memory stays bounded
for millions of pixels. :func:`assign_to_modes` then gives every point the label of its
nearest mode; it is a pure function of (points, modes), so it can run block by block on a
dask array once the modes of the whole image are known.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_shiftseg._errors import ShiftSegError

__all__ = ["assign_to_modes", "mean_shift"]

_KERNELS = ("flat", "gaussian")

# Points per distance chunk. A chunk costs (seeds x chunk) floats: 1000 seeds x 16384 points
# is 64 MB, small enough to sit beside a large embedding array and big enough to keep the
# matrix products efficient.
DEFAULT_CHUNK_SIZE = 16384


def _as_points(points, name: str, dtype=None) -> torch.Tensor:
    """Validate an (N, E) numpy array or tensor of finite numbers; return it as a tensor.

    Floating inputs keep their precision unless ``dtype`` is given; anything else becomes
    float32. The tensor may share memory with the input, so callers must not write to it.
    """
    if isinstance(points, torch.Tensor):
        tensor = points.detach()
    elif isinstance(points, np.ndarray):
        # from_numpy warns on read-only arrays (dask and zarr chunks often are); copy those.
        array = points if points.flags.writeable else points.copy()
        tensor = torch.from_numpy(array) if array.dtype.kind in "biuf" else None
        if tensor is None:
            raise TypeError(f"{name} must hold numbers, got dtype {points.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(points).__name__}")
    if tensor.ndim != 2:
        raise ShiftSegError(
            f"{name} must be a 2-D array (N points, E embedding dimensions), "
            f"got shape {tuple(tensor.shape)}"
        )
    if dtype is None:
        dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    tensor = tensor.to(dtype)
    if not bool(torch.isfinite(tensor).all()):
        raise ShiftSegError(f"{name} contains NaN or infinite values")
    return tensor


def _check_positive(value, name: str, allow_none: bool = False) -> None:
    """Raise unless ``value`` is a positive finite number (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ShiftSegError(f"{name} must be a positive number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ShiftSegError(f"{name} must be a positive number, got {value!r}")


def _check_count(value, name: str, minimum: int) -> None:
    """Raise unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ShiftSegError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _chunks(n: int, chunk_size: int):
    """Yield slices of ``chunk_size`` covering range(n)."""
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _kernel_sums(
    seeds: torch.Tensor, points: torch.Tensor, bandwidth: float, kernel: str, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel-weighted sums of ``points`` around every seed, and the total weights.

    Returns ``(sums, weights)`` of shapes (S, E) and (S,). For the flat kernel ``weights`` is
    the number of points within ``bandwidth`` of each seed (the seed's support).
    """
    sums = seeds.new_zeros(seeds.shape)
    weights = seeds.new_zeros(seeds.shape[0])
    for part in _chunks(points.shape[0], chunk_size):
        chunk = points[part]
        sq_dist = torch.cdist(seeds, chunk).square_()
        if kernel == "flat":
            w = (sq_dist <= bandwidth**2).to(chunk.dtype)
        else:
            w = sq_dist.mul_(-0.5 / bandwidth**2).exp_()
        sums.addmm_(w, chunk)
        weights += w.sum(dim=1)
    return sums, weights


def _support(modes: torch.Tensor, points: torch.Tensor, bandwidth: float, chunk_size: int):
    """Number of points within ``bandwidth`` of every mode."""
    return _kernel_sums(modes, points, bandwidth, "flat", chunk_size)[1]


def mean_shift(
    points,
    bandwidth: float,
    n_seeds: int = 1000,
    seeds=None,
    kernel: str = "flat",
    max_iter: int = 50,
    tol: float = 1e-3,
    merge_radius: float | None = None,
    min_cluster_size: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
        is None; capped at N.
    seeds : numpy.ndarray or torch.Tensor, optional
        (S, E) explicit starting points; overrides ``n_seeds`` and ``seed``.
    kernel : {'flat', 'gaussian'}
        'flat' weights all points within ``bandwidth`` equally (the reference's choice);
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
    seed : int
        Seed of the random choice of seeds; equal seeds give identical modes.
    device : str or torch.device
        Where to compute ('cpu', 'cuda', ...).
    chunk_size : int
        Points per distance chunk; memory is about ``4 * n_seeds * chunk_size`` bytes.

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
    """
    _check_positive(bandwidth, "bandwidth")
    _check_positive(tol, "tol")
    _check_positive(merge_radius, "merge_radius", allow_none=True)
    _check_count(n_seeds, "n_seeds", 1)
    _check_count(max_iter, "max_iter", 1)
    _check_count(min_cluster_size, "min_cluster_size", 1)
    _check_count(chunk_size, "chunk_size", 1)
    if kernel not in _KERNELS:
        raise ShiftSegError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    data = _as_points(points, "points", torch.float32).to(device)
    if data.shape[0] == 0:
        raise ShiftSegError("cannot run mean-shift on an empty set of points")
    if seeds is None:
        rng = np.random.default_rng(seed)
        index = rng.choice(data.shape[0], size=min(n_seeds, data.shape[0]), replace=False)
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

    # Identical seeds follow identical paths (embeddings of flat regions repeat a lot).
    current = torch.unique(current, dim=0)
    active = torch.ones(current.shape[0], dtype=torch.bool, device=data.device)
    for _ in range(max_iter):
        sums, weights = _kernel_sums(current[active], data, bandwidth, kernel, chunk_size)
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
    return _merge_modes(current, data, bandwidth, merge_radius, min_cluster_size, chunk_size)


def _merge_modes(modes, data, bandwidth, merge_radius, min_cluster_size, chunk_size):
    """Drop weak modes and those within ``merge_radius`` of a stronger one (greedy)."""
    support = _support(modes, data, bandwidth, chunk_size)
    keep = support >= max(min_cluster_size, 1)
    modes, support = modes[keep], support[keep]
    # Stable sort so that ties keep their (deterministic) order.
    order = torch.sort(support, descending=True, stable=True).indices
    modes = modes[order]
    close = (torch.cdist(modes, modes) < merge_radius).cpu().numpy()
    kept = np.zeros(modes.shape[0], dtype=bool)
    # Greedy suppression needs the decisions of all stronger modes first, hence the loop; it
    # runs over the few converged candidates, not over points.
    for i in range(modes.shape[0]):
        kept[i] = not close[i, :i][kept[:i]].any()
    return modes[torch.from_numpy(kept).to(modes.device)].cpu().numpy().astype(np.float32)


def assign_to_modes(
    points,
    modes,
    max_distance: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    chunk_size : int
        Points per distance chunk.
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
    _check_positive(max_distance, "max_distance", allow_none=True)
    _check_count(chunk_size, "chunk_size", 1)
    data = _as_points(points, "points")
    centres = _as_points(modes, "modes", data.dtype).to(device)
    if centres.shape[1] != data.shape[1]:
        raise ShiftSegError(
            f"modes have {centres.shape[1]} embedding dimensions but points have {data.shape[1]}"
        )
    labels = np.zeros(data.shape[0], dtype=np.int64)
    if centres.shape[0] == 0:
        return labels
    for part in _chunks(data.shape[0], chunk_size):
        # Exact distances (no |a|^2 + |b|^2 - 2ab shortcut) so ties and near-ties agree with a
        # brute-force argmin whatever the chunking.
        dist = torch.cdist(
            data[part].to(device), centres, compute_mode="donot_use_mm_for_euclid_dist"
        )
        nearest, index = dist.min(dim=1)
        chunk_labels = index + 1
        if max_distance is not None:
            chunk_labels[nearest > max_distance] = 0
        labels[part] = chunk_labels.cpu().numpy()
    return labels
