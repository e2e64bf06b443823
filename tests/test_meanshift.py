"""Tests for seeded mean-shift and nearest-mode assignment."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from napari_shiftseg.inference.meanshift import assign_to_modes, mean_shift
from napari_shiftseg.util._errors import ShiftSegError


def blobs(rng, n_clusters, dim, n_per_cluster, std=0.3):
    """Gaussian blobs centred on distinct points of the grid {0, 4, 8}^dim."""
    grid = np.unique(rng.integers(0, 3, size=(20 * n_clusters, dim)), axis=0)
    centres = 4.0 * rng.permutation(grid)[:n_clusters]
    truth = np.repeat(np.arange(len(centres)), n_per_cluster)
    points = centres[truth] + rng.normal(scale=std, size=(len(truth), dim))
    return points.astype(np.float32), truth


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_clusters=st.integers(1, 6),
    dim=st.integers(2, 8),
    n_per_cluster=st.integers(20, 60),
    kernel=st.sampled_from(["flat", "gaussian"]),
)
def test_recovers_separated_blobs(seed, n_clusters, dim, n_per_cluster, kernel):
    points, truth = blobs(np.random.default_rng(seed), n_clusters, dim, n_per_cluster)
    # In 8-D a blob of std 0.3 has a radius of about 0.85, so a bandwidth-1 window around an
    # outlying point holds only a handful of points and can stall there: min_cluster_size
    # drops those stray modes.
    modes = mean_shift(points, 1.0, n_seeds=200, seed=seed, kernel=kernel, min_cluster_size=5)
    labels = assign_to_modes(points, modes)
    assert adjusted_rand_score(truth, labels) >= 0.99


@pytest.mark.parametrize("bin_size", [0.25, None])
def test_recovers_3d_blobs_with_defaults(bin_size):
    points, truth = blobs(np.random.default_rng(1), 6, 3, 500)
    modes = mean_shift(points, 1.0, bin_size=bin_size)
    assert modes.dtype == np.float32 and modes.shape == (6, 3)
    assert adjusted_rand_score(truth, assign_to_modes(points, modes)) == 1.0
    # Modes sit at the blob means; binning moves them by far less than a bandwidth.
    means = np.stack([points[truth == k].mean(axis=0) for k in range(6)])
    nearest = np.linalg.norm(means[:, None] - modes[None], axis=2).min(axis=1)
    assert nearest.max() < 0.05


def test_modes_sorted_by_support_and_small_modes_dropped():
    rng = np.random.default_rng(2)
    big = rng.normal(scale=0.2, size=(300, 3))
    small = rng.normal(scale=0.2, size=(30, 3)) + 5.0
    points = np.concatenate([small, big])
    modes = mean_shift(points, 1.0, bin_size=None)
    assert len(modes) == 2
    assert np.linalg.norm(modes[0]) < 0.1 and np.linalg.norm(modes[1] - 5.0) < 0.1
    assert len(mean_shift(points, 1.0, min_cluster_size=100)) == 1
    assert len(mean_shift(points, 1.0, min_cluster_size=1000)) == 0


def grid_clusters(rng, per_side, n_per_cluster, std=0.2, spacing=4.0):
    """per_side**2 equal blobs on a 2-D grid: more clusters than a small seed budget."""
    centres = spacing * np.stack(np.meshgrid(*[np.arange(per_side)] * 2), -1).reshape(-1, 2)
    truth = np.repeat(np.arange(len(centres)), n_per_cluster)
    return (centres[truth] + rng.normal(scale=std, size=(len(truth), 2))).astype(np.float32), truth


def test_reseeding_finds_clusters_that_random_seeds_miss():
    # 400 clusters, 100 seeds: random seeds alone leave most clusters without a mode, whose
    # points then join a neighbour (a merge); re-seeding from the uncovered points finds them all.
    points, truth = grid_clusters(np.random.default_rng(5), 20, 30)
    once = mean_shift(points, 1.0, n_seeds=100, reseed_rounds=0)
    assert len(once) <= 100
    modes = mean_shift(points, 1.0, n_seeds=100)
    assert len(modes) == 400
    assert adjusted_rand_score(truth, assign_to_modes(points, modes)) == 1.0


def test_reseeding_adds_no_modes_for_sparse_tails():
    # Each cluster has a sparse tail of single points 1.5-2.5 bandwidths out: seeds drawn there
    # stall on plateaus of a few points, far below the typical support, and are not kept.
    rng = np.random.default_rng(6)
    points, truth = grid_clusters(rng, 3, 200, spacing=8.0)
    angle = rng.uniform(0, 2 * np.pi, 9 * 6)
    radius = rng.uniform(1.5, 2.5, angle.size)
    tails = np.repeat(np.unique(truth), 6)
    centres = np.stack([points[truth == k].mean(axis=0) for k in range(9)])
    tail_points = centres[tails] + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    points = np.concatenate([points, tail_points.astype(np.float32)])
    assert len(mean_shift(points, 1.0, n_seeds=20)) == 9


def test_deterministic_given_seed_and_independent_of_chunking():
    points, _ = blobs(np.random.default_rng(3), 5, 3, 200)
    first = mean_shift(points, 1.0, n_seeds=50, seed=7)
    assert np.array_equal(first, mean_shift(points, 1.0, n_seeds=50, seed=7))
    chunked = mean_shift(points, 1.0, n_seeds=50, seed=7, chunk_size=37)
    assert chunked.shape == first.shape and np.allclose(chunked, first, atol=1e-4)
    from_tensor = mean_shift(torch.from_numpy(points), 1.0, n_seeds=50, seed=7)
    assert np.array_equal(first, from_tensor)


def test_explicit_seeds_and_merge_radius():
    # Two blobs 2 apart: separate modes with a small merge radius, one with a large one.
    rng = np.random.default_rng(4)
    points = rng.normal(scale=0.1, size=(200, 2))
    points[100:, 0] += 2.0
    seeds = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert len(mean_shift(points, 1.0, seeds=seeds)) == 2
    assert len(mean_shift(points, 1.0, seeds=seeds, merge_radius=3.0)) == 1
    # A seed far from every point has no window to move in and no support: it is dropped.
    lonely = mean_shift(points, 1.0, seeds=np.array([[50.0, 50.0], [0.0, 0.0]]))
    assert len(lonely) == 1 and np.linalg.norm(lonely[0]) < 0.1


def _left_of(limit):
    return lambda x: x[:, 0] < limit


def test_a_region_seeds_and_keeps_only_its_own_modes():
    """``inside``: seeds come from the region, and only its modes come back (blockwise mean-shift)."""
    rng = np.random.default_rng(5)
    points = np.concatenate([rng.normal((0.0, 0.0), 0.1, (100, 2)), rng.normal((4.0, 0.0), 0.1, (300, 2)),
                             rng.normal((8.0, 0.0), 0.1, (150, 2))]).astype(np.float32)
    everywhere = mean_shift(points, 1.0, n_seeds=50)
    assert len(everywhere) == 3
    mine = mean_shift(points, 1.0, n_seeds=5, inside=_left_of(2.0))
    assert len(mine) == 1 and abs(mine[0, 0]) < 0.1
    # The blobs the region does not own are never seeded and need no mode: no re-seeding round
    # looks for them, however few seeds there are.
    two = mean_shift(points, 1.0, n_seeds=1, inside=_left_of(6.0))
    np.testing.assert_allclose(np.sort(two[:, 0]), [0.0, 4.0], atol=0.1)
    assert mean_shift(points, 1.0, inside=_left_of(-5.0)).shape == (0, 2)  # nothing to seed


def test_a_mode_outside_the_region_cannot_suppress_one_inside():
    """Modes outside are dropped before merging: a stronger mode just outside the region (one a
    halo cut short would give) leaves the region's weaker mode alone; merging across regions is
    the caller's (clustering._merge_across)."""
    rng = np.random.default_rng(6)
    points = np.concatenate([rng.normal((0.0, 0.0), 0.1, (100, 2)),
                             rng.normal((2.0, 0.0), 0.1, (300, 2))]).astype(np.float32)
    merged = mean_shift(points, 0.5, n_seeds=50, merge_radius=3.0)
    assert len(merged) == 1 and abs(merged[0, 0] - 2.0) < 0.1
    region = mean_shift(points, 0.5, n_seeds=50, merge_radius=3.0, inside=_left_of(1.0))
    assert len(region) == 1 and abs(region[0, 0]) < 0.1


def test_a_region_must_answer_once_per_vector():
    with pytest.raises(ShiftSegError, match="one bool per vector"):
        mean_shift(np.zeros((10, 2), np.float32), 1.0, inside=lambda x: np.ones(3, bool))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_points=st.integers(0, 300),
    n_modes=st.integers(1, 12),
    dim=st.integers(1, 5),
    max_distance=st.sampled_from([None, 0.5, 2.0]),
    integer_grid=st.booleans(),
)
def test_assign_matches_brute_force(seed, n_points, n_modes, dim, max_distance, integer_grid):
    rng = np.random.default_rng(seed)
    if integer_grid:
        # Small integer coordinates give exact distance ties: the first mode must win.
        points = rng.integers(-2, 3, size=(n_points, dim)).astype(np.float64)
        modes = rng.integers(-2, 3, size=(n_modes, dim)).astype(np.float64)
    else:
        points = rng.normal(size=(n_points, dim))
        modes = rng.normal(size=(n_modes, dim))
    dist = np.linalg.norm(points[:, None] - modes[None], axis=2)
    expected = dist.argmin(axis=1) + 1 if n_points else np.zeros(0, dtype=np.int64)
    if max_distance is not None and n_points:
        expected[dist.min(axis=1) > max_distance] = 0
    labels = assign_to_modes(points, modes, max_distance=max_distance, chunk_size=17)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


def test_assign_read_only_input_and_no_modes():
    points = np.zeros((5, 3), dtype=np.float32)
    points.flags.writeable = False  # dask and zarr chunks often are read-only
    np.testing.assert_array_equal(assign_to_modes(points, np.ones((2, 3))), np.ones(5))
    np.testing.assert_array_equal(assign_to_modes(points, np.zeros((0, 3))), np.zeros(5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    points, truth = blobs(np.random.default_rng(5), 6, 3, 300)
    cpu = mean_shift(points, 1.0, seed=0)
    gpu = mean_shift(points, 1.0, seed=0, device="cuda")
    assert gpu.shape == cpu.shape and np.allclose(gpu, cpu, atol=1e-3)
    labels = assign_to_modes(points, gpu, device="cuda")
    assert adjusted_rand_score(truth, labels) == 1.0


GOOD = np.zeros((4, 3), dtype=np.float32)


@pytest.mark.parametrize(
    ("points", "kwargs", "error", "match"),
    [
        (GOOD, {"bandwidth": 0}, ShiftSegError, "bandwidth"),
        (GOOD, {"bandwidth": -1.0}, ShiftSegError, "bandwidth"),
        (GOOD, {"bandwidth": float("nan")}, ShiftSegError, "bandwidth"),
        (GOOD, {"bandwidth": "1"}, ShiftSegError, "bandwidth"),
        (GOOD, {"bandwidth": 1.0, "kernel": "epanechnikov"}, ShiftSegError, "kernel"),
        (GOOD, {"bandwidth": 1.0, "n_seeds": 0}, ShiftSegError, "n_seeds"),
        (GOOD, {"bandwidth": 1.0, "min_cluster_size": 0}, ShiftSegError, "min_cluster_size"),
        (GOOD, {"bandwidth": 1.0, "bin_size": 0}, ShiftSegError, "bin_size"),
        (GOOD, {"bandwidth": 1.0, "seeds": np.zeros((2, 2))}, ShiftSegError, "seeds"),
        (GOOD, {"bandwidth": 1.0, "seeds": np.zeros((0, 3))}, ShiftSegError, "seeds"),
        (np.zeros(4), {"bandwidth": 1.0}, ShiftSegError, "2-D"),
        (np.zeros((2, 2, 2)), {"bandwidth": 1.0}, ShiftSegError, "2-D"),
        (np.zeros((0, 3)), {"bandwidth": 1.0}, ShiftSegError, "empty"),
        (np.array([[0.0, np.nan]]), {"bandwidth": 1.0}, ShiftSegError, "NaN"),
        ([[0.0, 1.0]], {"bandwidth": 1.0}, TypeError, "numpy array"),
    ],
)
def test_mean_shift_rejects_bad_input(points, kwargs, error, match):
    with pytest.raises(error, match=match):
        mean_shift(points, **kwargs)


@pytest.mark.parametrize(
    ("points", "modes", "kwargs", "match"),
    [
        (GOOD, np.zeros((2, 2)), {}, "embedding dimensions"),
        (GOOD, np.zeros(3), {}, "modes must be a 2-D"),
        (GOOD, np.zeros((2, 3)), {"max_distance": 0.0}, "max_distance"),
        (np.full((2, 3), np.inf), np.zeros((2, 3)), {}, "infinite"),
    ],
)
def test_assign_rejects_bad_input(points, modes, kwargs, match):
    with pytest.raises(ShiftSegError, match=match):
        assign_to_modes(points, modes, **kwargs)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from([None, 1.0, 2.0]),
       st.booleans())
def test_the_tree_assigns_exactly_as_brute_force(seed, dims, max_distance, on_grid):
    """Many modes go through a k-d tree (issue 27); the labels must equal brute force's, ties
    to the lower index and the max_distance cut included. Grid-valued data makes exact ties
    (points halfway between modes, duplicated modes, points at max_distance) common."""
    from napari_shiftseg.inference.meanshift import _TREE_MIN_MODES, _assign_brute_force

    rng = np.random.default_rng(seed)
    k = _TREE_MIN_MODES + int(rng.integers(0, 50))
    if on_grid:
        modes = rng.integers(-4, 5, (k, dims)).astype(np.float32)
        points = rng.integers(-8, 9, (3000, dims)).astype(np.float32) / 2
    else:
        modes = rng.normal(size=(k, dims)).astype(np.float32) * 3
        points = rng.normal(size=(3000, dims)).astype(np.float32) * 3
    tree = assign_to_modes(points, modes, max_distance=max_distance)
    brute = _assign_brute_force(torch.from_numpy(points), torch.from_numpy(modes), max_distance,
                                None, "cpu")
    np.testing.assert_array_equal(tree, brute)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from([None, 0.5, 2.0]),
       st.booleans(), st.booleans())
def test_local_assignment_equals_brute_force(seed, dims, max_distance, on_grid, outliers):
    """A block of a spatial embedding is measured against the modes near it only (issue 27):
    the labels must still be brute force's, ties, max_distance and far stray points included,
    and fewer modes than all must have been measured."""
    import napari_shiftseg.inference.meanshift as ms

    rng = np.random.default_rng(seed)
    k = ms._TREE_MIN_MODES + int(rng.integers(0, 300))
    # Like a spatial head: the first (at most two) channels spread over the image, the others
    # narrow; the points are one block's.
    spread = np.where(np.arange(dims) < 2, 60.0, 4.0)
    centre = np.where(np.arange(dims) < 2, 25.0, 2.0)
    if on_grid:  # exact ties: points halfway between modes, duplicated modes
        modes = np.floor(rng.random((k, dims)) * spread).astype(np.float32)
        points = (np.round(centre + rng.normal(size=(2000, dims)) * 2) + rng.integers(0, 2, (2000, dims)) / 2)
    else:
        modes = rng.random((k, dims)) * spread
        points = centre + rng.normal(size=(2000, dims)) * 2
    modes, points = modes.astype(np.float32), points.astype(np.float32)
    if outliers:
        points[:7] = rng.uniform(-40, 100, (7, dims))
    measured = []
    subset = ms._assign_subset

    def spy(data, centres, near, max_distance):
        measured.append(near.size)
        return subset(data, centres, near, max_distance)

    ms._assign_subset = spy
    try:
        local = assign_to_modes(points, modes, max_distance=max_distance)
    finally:
        ms._assign_subset = subset
    brute = ms._assign_brute_force(torch.from_numpy(points), torch.from_numpy(modes), max_distance,
                                   None, "cpu")
    np.testing.assert_array_equal(local, brute)
    if not outliers and dims >= 2:
        assert measured and max(measured) < k / 2


def test_local_assignment_measures_again_what_its_neighbourhood_cannot_decide():
    """A point in a hole of the modes, at the block's edge: its nearest mode lies outside the
    first neighbourhood, so the second round must find it (tied modes: the lower index)."""
    import napari_shiftseg.inference.meanshift as ms

    x, y = np.meshgrid(np.arange(0, 100, 2.0), np.arange(0, 100, 2.0), indexing="ij")
    modes = np.stack([x.ravel(), y.ravel()], axis=1)
    modes = modes[np.hypot(modes[:, 0] - 30, modes[:, 1] - 45) >= 8].astype(np.float32)
    rng = np.random.default_rng(0)
    points = rng.uniform(40, 50, (600, 2)).astype(np.float32)
    points[1] = (30, 45)  # not among the points that size the neighbourhood
    local = assign_to_modes(points, modes)
    brute = ms._assign_brute_force(torch.from_numpy(points), torch.from_numpy(modes), None, None, "cpu")
    np.testing.assert_array_equal(local, brute)
    assert tuple(modes[local[1] - 1]) == (22.0, 44.0)  # first of the modes sqrt(65) away
