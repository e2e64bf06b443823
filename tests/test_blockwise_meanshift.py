"""Blockwise modes of spatial embeddings (issue 27): cubes of embedding space with a halo, the
modes each cube owns, merged across cube borders; the small-image path unchanged."""

import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from napari_shiftseg.inference.clustering import (
    BlockwiseOptions,
    Clustering,
    _cubes,
    _halo,
    _merge_across,
    _owner,
    assign_clusters,
    cluster_embeddings,
)
from napari_shiftseg.inference.meanshift import _merge_modes
from napari_shiftseg.synthetic.synth import random_objects
from napari_shiftseg.util._errors import ShiftSegError

SCALE = 0.5      # embedding units per voxel
BANDWIDTH = 1.0  # halo 1 unit = 2 voxels
FORCE = BlockwiseOptions(density=0.5, block=8.0, min_foreground=0)  # cubes of 16 voxels


def spatial_embeddings(labels, scale=SCALE, noise=0.15, seed=0, centres=None):
    """What a well-trained spatial head gives: every voxel of an object at ``scale`` times the
    object's centre (``centres[i - 1]`` or its centroid) plus noise; background at its own
    position; foreground logit +-6 (last channel)."""
    rng = np.random.default_rng(seed)
    ndim = labels.ndim
    n = int(labels.max())
    if centres is None:
        index = np.indices(labels.shape).reshape(ndim, -1)
        flat = labels.ravel()
        counts = np.bincount(flat, minlength=n + 1)[1:]
        centres = np.stack([np.bincount(flat, index[a], n + 1)[1:] / counts for a in range(ndim)], 1)
    position = np.indices(labels.shape).astype(np.float32)
    emb = np.zeros((ndim + 1,) + labels.shape, np.float32)
    fg = labels > 0
    emb[:-1] = position
    emb[:-1, fg] = np.asarray(centres, np.float32)[labels[fg] - 1].T
    emb[:-1] = scale * emb[:-1] + rng.normal(0, noise, emb[:-1].shape).astype(np.float32)
    emb[-1] = np.where(fg, 6.0, -6.0)
    return emb


def objects(shape, seed, radius=4):
    """Non-touching spheres (disks), one per 3000 (250) voxels: as many as always fit."""
    n = int(np.prod(shape)) // (3000 if len(shape) == 3 else 250)
    _, labels = random_objects(shape, n, radius=radius, radius_jitter=1.0, seed=seed)
    return np.asarray(labels, np.int32)


def fg_ari(emb, a: Clustering, b: Clustering) -> float:
    fg = emb[-1] > 0
    return adjusted_rand_score(assign_clusters(emb, a).compute()[fg], assign_clusters(emb, b).compute()[fg])


# --------------------------------------------------------------------------- against the global path


@settings(max_examples=6)
@given(seed=st.integers(0, 10**6), three_d=st.booleans())
def test_blockwise_matches_global(seed, three_d):
    shape = (24, 40, 40) if three_d else (72, 72)
    labels = objects(shape, seed)
    emb = spatial_embeddings(labels, seed=seed)
    found = cluster_embeddings(emb, BANDWIDTH, n_seeds=200, seed=seed)
    blocks = cluster_embeddings(emb, BANDWIDTH, n_seeds=200, seed=seed, position_scale=SCALE, blockwise=FORCE)
    assert found.blocks == 0 and blocks.blocks > 1
    assert blocks.n_clusters == found.n_clusters == labels.max()
    assert fg_ari(emb, found, blocks) >= 0.99


def _border_scene(shift=0.0, noise=0.15, seed=0):
    """(labels, embeddings, centres): a disk centred ``shift`` voxels off the border of the cube
    rows 1 and 2 (voxel 32 = 16 units), four disks well inside cubes."""
    shape = (48, 48)
    centres = np.array([[32.0 + shift, 24.0], [8.0, 8.0], [8.0, 40.0], [40.0, 8.0], [40.0, 40.0]])
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4.5**2] = i
    return labels, spatial_embeddings(labels, centres=centres, noise=noise, seed=seed), centres


@settings(max_examples=8)
@given(shift=st.floats(-0.6, 0.6), seed=st.integers(0, 1000))
def test_a_mode_on_a_cube_border_is_found_once(shift, seed):
    """An object whose centre sits on (or within a noise width of) the border of two cubes: one
    mode, one cluster, whatever side its mode falls on."""
    labels, emb, centres = _border_scene(shift, seed=seed)
    found = cluster_embeddings(emb, BANDWIDTH, n_seeds=50, seed=seed, position_scale=SCALE, blockwise=FORCE)
    assert found.n_clusters == len(centres)
    ids = assign_clusters(emb, found).compute()
    for i in range(1, len(centres) + 1):
        assert len(np.unique(ids[labels == i])) == 1
    assert len(np.unique(ids[labels > 0])) == len(centres)


def test_a_mode_found_on_both_sides_of_a_border_is_kept_once(monkeypatch):
    """Two cubes can place the same mode a rounding apart, each on its own side of their border
    (each then owns its copy): the copies are merged."""
    import napari_shiftseg.inference.clustering as clustering

    labels, emb, centres = _border_scene(noise=0.0)  # the border disk's points all at 16.0
    real = clustering.mean_shift

    def rounding(points, bandwidth, seed=0, **kwargs):  # cube row 1 rounds down, row 2 up
        modes = real(points, bandwidth, seed=seed, **kwargs)
        modes[:, 0] += -0.01 if (seed // 3) % 2 else 0.01
        return modes

    monkeypatch.setattr(clustering, "mean_shift", rounding)
    found = cluster_embeddings(emb, BANDWIDTH, n_seeds=50, position_scale=SCALE, blockwise=FORCE)
    assert found.n_clusters == len(centres)


def test_each_cube_keeps_only_the_modes_it_owns(monkeypatch):
    """Without the merge, the cubes alone give every mode once (modes away from borders)."""
    import napari_shiftseg.inference.clustering as clustering

    labels, emb, centres = _border_scene(shift=3.0)
    monkeypatch.setattr(clustering, "_merge_across", lambda modes, support, radius: np.argsort(-support))
    found = cluster_embeddings(emb, BANDWIDTH, n_seeds=50, position_scale=SCALE, blockwise=FORCE)
    assert found.n_clusters == len(centres)
    np.testing.assert_allclose(np.sort(found.modes[:, 0]), np.sort(SCALE * centres[:, 0]), atol=0.1)


# --------------------------------------------------------------------------- independence


@settings(max_examples=6)
@given(chunks=st.tuples(st.integers(5, 40), st.integers(5, 40)), seed=st.integers(0, 100))
def test_modes_do_not_depend_on_the_chunking(chunks, seed):
    labels = objects((64, 64), seed)
    emb = spatial_embeddings(labels, seed=seed)
    whole = cluster_embeddings(emb, BANDWIDTH, n_seeds=100, position_scale=SCALE, blockwise=FORCE)
    chunked = cluster_embeddings(da.from_array(emb, chunks=(3, *chunks)), BANDWIDTH, n_seeds=100,
                                 position_scale=SCALE, blockwise=FORCE)
    assert whole.blocks == chunked.blocks > 1
    np.testing.assert_array_equal(whole.modes, chunked.modes)
    assert whole.to_dict() == chunked.to_dict()


def test_distributed_client_gives_the_in_process_modes():
    distributed = pytest.importorskip("distributed")
    labels = objects((64, 64), 3)
    emb = da.from_array(spatial_embeddings(labels, seed=3), chunks=(3, 24, 40))
    local = cluster_embeddings(emb, BANDWIDTH, n_seeds=100, position_scale=SCALE, blockwise=FORCE)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = cluster_embeddings(emb, BANDWIDTH, n_seeds=100, position_scale=SCALE, blockwise=FORCE,
                                    compute=lambda *tasks: client.gather(client.compute(list(tasks))))
    assert local.blocks > 1
    np.testing.assert_array_equal(local.modes, remote.modes)


# --------------------------------------------------------------------------- the small path


def test_small_images_keep_the_global_path_bit_for_bit():
    labels = objects((16, 40, 40), 5)
    emb = spatial_embeddings(labels, seed=5)
    plain = cluster_embeddings(emb, BANDWIDTH, n_seeds=100, max_points=2000)
    # Foreground under max_points / density: the global path, the same points, the same modes.
    assert (emb[-1] > 0).sum() < 2000 / FORCE.density * 40
    spatial = cluster_embeddings(emb, BANDWIDTH, n_seeds=100, max_points=2000, position_scale=SCALE,
                                 blockwise=BlockwiseOptions(density=0.01, block=8.0))
    assert spatial.blocks == 0 and "blocks" not in spatial.to_dict()
    np.testing.assert_array_equal(plain.modes, spatial.modes)
    assert plain.to_dict() == spatial.to_dict()
    np.testing.assert_array_equal(assign_clusters(emb, plain).compute(), assign_clusters(emb, spatial).compute())


def test_without_a_foreground_channel_the_global_path_runs():
    labels = objects((48, 48), 1)
    emb = spatial_embeddings(labels, seed=1)[:-1]
    found = cluster_embeddings(emb, BANDWIDTH, foreground=False, n_seeds=100, position_scale=SCALE,
                               blockwise=FORCE)
    assert found.blocks == 0 and found.background is not None


def test_threshold_switches_paths():
    labels = objects((48, 48), 2)
    emb = spatial_embeddings(labels, seed=2)
    n_fg = int((emb[-1] > 0).sum())
    below = BlockwiseOptions(density=0.5, block=8.0, min_foreground=n_fg)
    above = BlockwiseOptions(density=0.5, block=8.0, min_foreground=n_fg - 1)
    assert cluster_embeddings(emb, BANDWIDTH, position_scale=SCALE, blockwise=below).blocks == 0
    out = cluster_embeddings(emb, BANDWIDTH, position_scale=SCALE, blockwise=above)
    assert out.blocks == 9  # 24 units of extent / 8 per cube, per axis
    # a fixed density: every foreground voxel with a key below it, about density x foreground
    assert abs(out.n_points - 0.5 * n_fg) < 5 * np.sqrt(0.25 * n_fg)
    assert BlockwiseOptions().threshold(50_000) == pytest.approx(50_000 / 0.03)


def test_too_little_foreground_for_one_point_gives_no_modes():
    emb = spatial_embeddings(np.pad(np.ones((1, 1), np.int32), 10), seed=0)
    found = cluster_embeddings(emb, BANDWIDTH, position_scale=SCALE,
                               blockwise=BlockwiseOptions(density=1e-9, min_foreground=0))
    assert found.blocks == 1 and found.modes.shape == (0, 2) and found.n_points == 0
    assert assign_clusters(emb, found).compute().max() == 0


def test_a_plane_by_plane_model_cuts_the_planes_only():
    """Two scales on a (z, y, x) stack: positions are in y, x; the z axis is not cut."""
    planes = np.stack([objects((48, 48), s) for s in (0, 1)])
    emb = np.stack([spatial_embeddings(p, seed=i) for i, p in enumerate(planes)], axis=1)
    found = cluster_embeddings(emb, BANDWIDTH, n_seeds=100, position_scale=(SCALE, SCALE), blockwise=FORCE)
    assert found.blocks == 9 and found.modes.shape[1] == 2
    with pytest.raises(ShiftSegError, match="one value per spatial axis"):
        cluster_embeddings(emb, BANDWIDTH, position_scale=(1.0,) * 4)


def test_clustering_round_trip_keeps_the_blocks():
    c = Clustering(np.arange(6, dtype=np.float32).reshape(2, 3), 1.5, 0.4, True, None, 9, 12)
    back = Clustering.from_dict(c.to_dict())
    assert back.blocks == 12 and back.n_points == 9
    np.testing.assert_array_equal(back.modes, c.modes)
    old = {k: v for k, v in c.to_dict().items() if k != "blocks"}  # stored before blockwise existed
    assert Clustering.from_dict(old).blocks == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(position_scale=0.0), "position_scale"),
    (dict(position_scale=(0.5, float("nan"))), "position_scale"),
    (dict(blockwise="fast"), "BlockwiseOptions"),
])
def test_bad_arguments(kwargs, match):
    emb = np.zeros((3, 8, 8), np.float32)
    with pytest.raises((ShiftSegError, TypeError), match=match):
        cluster_embeddings(emb, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(density=0.0), dict(density=1.5), dict(block=-1.0),
                                    dict(min_foreground=-1)])
def test_bad_options(kwargs):
    with pytest.raises(ShiftSegError):
        BlockwiseOptions(**kwargs)


def test_spatial_embeddings_need_a_channel_per_axis():
    with pytest.raises(ShiftSegError, match="at least 3 embedding channels"):
        cluster_embeddings(np.zeros((3, 4, 8, 8), np.float32), position_scale=0.5)


# --------------------------------------------------------------------------- the pieces


@settings(max_examples=25)
@given(data=st.data(), d=st.integers(1, 3), side=st.floats(0.5, 4.0), grow=st.floats(0.0, 6.0))
def test_cubes_hold_exactly_the_points_of_their_grown_box(data, d, side, grow):
    grid = tuple(data.draw(st.integers(1, 4)) for _ in range(d))
    n = data.draw(st.integers(1, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    position = rng.uniform(-3.0, side * max(grid) + 3.0, (n, d))
    point, cube = _cubes(position, side, grow, grid)
    got = set(zip(point.tolist(), cube.tolist()))
    expected = set()
    for c in np.ndindex(*grid):
        lo = np.where(np.asarray(c) == 0, -np.inf, np.asarray(c) * side - grow)
        hi = np.where(np.asarray(c) == np.asarray(grid) - 1, np.inf, (np.asarray(c) + 1) * side + grow)
        inside = np.all((position >= lo) & (position < hi), axis=1)
        expected |= {(int(p), int(np.ravel_multi_index(c, grid))) for p in np.flatnonzero(inside)}
    assert got == expected and len(got) == point.size  # each pair once
    # sorted by cube, then point (a cube's members are one slice, in raster order)
    assert np.array_equal(np.lexsort((point, cube)), np.arange(point.size))
    # every point owned by exactly one cube, one it belongs to
    owner = _owner(position, side, grid)
    assert all((p, int(o)) in got for p, o in enumerate(owner))


@settings(max_examples=25)
@given(n=st.integers(1, 60), seed=st.integers(0, 10**6), radius=st.floats(0.1, 3.0))
def test_merge_across_cubes_is_mean_shifts_merge(n, seed, radius):
    rng = np.random.default_rng(seed)
    modes = rng.uniform(0, 6, (n, 3)).astype(np.float32)
    support = rng.integers(1, 5, n).astype(np.float64)  # ties on purpose
    kept = _merge_across(modes, support, radius)
    expected = _merge_modes(torch.from_numpy(modes), torch.from_numpy(support), radius, 1)
    np.testing.assert_array_equal(modes[kept], expected.numpy())


def test_halo_rule():
    assert _halo(2.0) == 2.0  # flat: the window
    assert _halo(2.0, "gaussian") == 6.0  # three standard deviations


def test_cubes_are_seeded_in_proportion_to_the_points_they_own(monkeypatch):
    """A cube draws seeds per sample point it owns (twice the global path's n_seeds / max_points),
    never more than n_seeds: a sparse cube gets fewer seeds than a dense one."""
    import napari_shiftseg.inference.clustering as clustering

    labels = objects((64, 64), 4)
    labels[:, 40:] = 0  # the right part empty: cubes there own few or no foreground points
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
    emb = spatial_embeddings(labels, seed=4)
    asked = []
    real = clustering.mean_shift

    def recording(points, bandwidth, n_seeds=1000, inside=None, **kwargs):
        asked.append((n_seeds, int(inside(points).sum())))
        return real(points, bandwidth, n_seeds=n_seeds, inside=inside, **kwargs)

    monkeypatch.setattr(clustering, "mean_shift", recording)
    cluster_embeddings(emb, BANDWIDTH, n_seeds=40, max_points=2000, position_scale=SCALE, blockwise=FORCE)
    seeds = np.array([a[0] for a in asked])
    owned = np.array([a[1] for a in asked])
    assert seeds.max() <= 40 and seeds.min() >= 1
    dense, sparse = owned.argmax(), owned[owned > 0].argmin()
    assert seeds[dense] > seeds[owned > 0][sparse]
    np.testing.assert_array_equal(seeds, np.minimum(40, np.maximum(1, np.ceil(2 * 40 / 2000 * owned))))
