"""Embeddings -> instances: clustering, blockwise assignment, components across chunk faces."""

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from napari_shiftseg.inference.instances import (
    Clustering,
    cluster_embeddings,
    label_clusters,
    label_instances,
    sample_foreground,
    segment_instances,
    write_instances,
)
from napari_shiftseg.util._errors import ShiftSegError


def assert_same_labeling(expected, actual):
    """Equal up to renumbering: a bijection between the ids, with 0 <-> 0."""
    expected, actual = np.asarray(expected).ravel(), np.asarray(actual).ravel()
    assert ((expected == 0) == (actual == 0)).all()
    pairs = np.unique(np.stack([expected, actual]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]
    assert len(np.unique(pairs[1])) == pairs.shape[1]


def reference_components(clusters, connectivity):
    """scipy.ndimage.label of each cluster of the whole array, ids made unique."""
    structure = ndimage.generate_binary_structure(clusters.ndim, connectivity)
    out = np.zeros(clusters.shape, np.int64)
    offset = 0
    for k in np.unique(clusters[clusters > 0]):
        lab, n = ndimage.label(clusters == k, structure=structure)
        out[lab > 0] = lab[lab > 0] + offset
        offset += n
    return out


def synthetic_embeddings(labels, codes, noise=0.2, seed=0):
    """(E+1, *shape) embeddings: object i gets codes[i] + noise, fg logit +-6."""
    rng = np.random.default_rng(seed)
    codes = np.asarray(codes, np.float32)
    emb = np.zeros((codes.shape[1] + 1,) + labels.shape, np.float32)
    fg = labels > 0
    emb[:-1, fg] = codes[labels[fg] - 1].T
    emb[:-1] += rng.normal(0, noise, emb[:-1].shape).astype(np.float32)
    emb[-1] = np.where(fg, 6.0, -6.0)
    return emb


def disks(shape, centres, radius):
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def test_cluster_and_label_recover_ground_truth():
    centres = [(8 + 16 * i, 8 + 16 * j) for i in range(3) for j in range(3)]
    gt = disks((48, 48), centres, 5)
    rng = np.random.default_rng(1)
    codes = rng.permutation(np.array([[a, b, c] for a in (0, 7) for b in (0, 7) for c in (0, 7, 14)],
                                     np.float32))[:9]
    emb = da.from_array(synthetic_embeddings(gt, codes), chunks=(4, 13, 11))
    labels, clustering = segment_instances(emb, bandwidth=2.0, n_seeds=200, max_points=2000)
    result = labels.compute()
    assert labels.dtype == np.int32 and result.shape == gt.shape
    assert clustering.n_clusters == 9
    assert adjusted_rand_score(gt.ravel(), result.ravel()) >= 0.99
    assert sorted(np.unique(result)) == list(range(10))  # consecutive ids


def test_far_apart_objects_with_one_embedding_get_two_ids():
    gt = disks((40, 60), [(10, 10), (30, 50)], 5)
    emb = synthetic_embeddings(gt, [[1, 1, 1], [1, 1, 1]], noise=0.05)
    labels, clustering = segment_instances(da.from_array(emb, chunks=(4, 17, 23)), bandwidth=1.0,
                                           n_seeds=50)
    result = labels.compute()
    assert clustering.n_clusters == 1
    assert_same_labeling(gt, result)


def test_touching_objects_of_different_clusters_stay_apart():
    gt = np.zeros((20, 20), np.int32)
    gt[5:15, 2:10], gt[5:15, 10:18] = 1, 2
    emb = synthetic_embeddings(gt, [[0, 0], [8, 0]], noise=0.05)
    labels, _ = segment_instances(da.from_array(emb, chunks=(3, 7, 7)), bandwidth=2.0, n_seeds=50)
    assert_same_labeling(gt, labels.compute())


@st.composite
def cluster_arrays(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(3, 14 if ndim == 2 else 7)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    k = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    density = draw(st.sampled_from([0.3, 0.6, 0.9]))
    rng = np.random.default_rng(seed)
    clusters = np.where(rng.random(shape) < density, rng.integers(1, k + 1, shape), 0)
    connectivity = draw(st.integers(1, ndim))
    min_size = draw(st.sampled_from([0, 0, 2, 4]))
    return clusters.astype(np.int32), chunks, connectivity, min_size


@given(cluster_arrays())
def test_components_across_chunk_faces_equal_whole_array(case):
    clusters, chunks, connectivity, min_size = case
    result = label_clusters(da.from_array(clusters, chunks=chunks), min_size=min_size,
                            connectivity=connectivity).compute()
    expected = reference_components(clusters, connectivity)
    sizes = np.bincount(expected.ravel())
    expected[sizes[expected] < min_size] = 0
    assert_same_labeling(expected, result)
    assert result.max() == len(np.unique(result)) - (0 in result)


def test_single_cluster_equals_scipy_label_with_odd_chunks():
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((45, 53)) < 0.55)
    expected, n = ndimage.label(mask)
    result = label_clusters(da.from_array(mask.astype(np.int32), chunks=(7, 5))).compute()
    assert_same_labeling(expected, result)
    assert result.max() == n


def test_min_size_removes_small_objects_across_chunks():
    clusters = np.zeros((12, 12), np.int32)
    clusters[0:2, 0:2] = 1            # 4 voxels
    clusters[5:8, 4:9] = 1            # 15 voxels, split over 4 chunks
    clusters[10, 10] = 2              # 1 voxel
    result = label_clusters(da.from_array(clusters, chunks=(6, 6)), min_size=5).compute()
    assert result.max() == 1
    assert (result > 0).sum() == 15 and (result[5:8, 4:9] == 1).all()


@pytest.mark.parametrize("connectivity", [1, 2])
def test_write_instances_to_zarr_equals_lazy(tmp_path, monkeypatch, connectivity):
    """Face connectivity links the faces from each block's outer planes, read once per block
    (issue 27); diagonal connectivity reads the slab pieces. Both give label_instances' labels."""
    import napari_shiftseg.inference.instances as instances

    reads = []
    planes = instances._stage_planes
    monkeypatch.setattr(instances, "_stage_planes",
                        lambda out, region, offset: reads.append(str(region)) or planes(out, region, offset))
    centres = [(6, 6), (6, 30), (25, 18), (30, 33), (17, 6)]
    gt = disks((37, 41), centres, 5)
    emb = synthetic_embeddings(gt, [[0, 0, 0], [6, 0, 0], [1, 0, 0], [0, 0, 6], [6, 6, 0]], noise=0.05)
    emb_z = zarr.create_array(tmp_path / "e.zarr", shape=emb.shape, chunks=(3, 10, 12), dtype="f4")
    emb_z[...] = emb
    clustering = cluster_embeddings(emb_z, bandwidth=2.0, n_seeds=100)
    out = zarr.create_array(tmp_path / "l.zarr", shape=gt.shape, chunks=(10, 12), dtype="i4")
    count = write_instances(emb_z, clustering, out, min_size=3, connectivity=connectivity)
    lazy = label_instances(da.from_zarr(emb_z), clustering, min_size=3, connectivity=connectivity).compute()
    np.testing.assert_array_equal(out[...], lazy)
    assert count == lazy.max() == 5
    assert_same_labeling(gt, lazy)
    # 4 x 4 blocks, each read once for its planes; none with diagonal connectivity.
    assert len(reads) == len(set(reads)) == (16 if connectivity == 1 else 0)


def test_write_instances_links_faces_along_every_axis_in_3d(tmp_path):
    """Balls cut by chunk faces along z, y and x (uneven last chunks): one object each."""
    grid = np.indices((13, 22, 19)).transpose(1, 2, 3, 0)
    gt = np.zeros((13, 22, 19), np.int32)
    for k, centre in enumerate([(6, 5, 5), (6, 10, 14), (3, 17, 8), (9, 16, 16)], start=1):
        gt[((grid - centre) ** 2).sum(-1) <= 9] = k
    codes = np.array([[0, 0], [6, 0], [0, 6], [6, 6], [12, 0]], np.float32)
    emb = np.concatenate([codes[gt].transpose(3, 0, 1, 2), np.where(gt > 0, 6.0, -6.0)[None]]).astype(np.float32)
    out = zarr.create_array(tmp_path / "l.zarr", shape=gt.shape, chunks=(5, 7, 6), dtype="i4")
    count = write_instances(da.from_array(emb, chunks=(3, 5, 7, 6)), Clustering(codes[1:], 2.0), out)
    assert count == 4
    assert_same_labeling(gt, out[...])


def test_without_foreground_channel_the_largest_cluster_is_background():
    gt = disks((40, 40), [(10, 10), (28, 28)], 5)
    emb = synthetic_embeddings(gt, [[6, 0], [0, 6]], noise=0.05)[:-1]  # no fg channel
    labels, clustering = segment_instances(da.from_array(emb, chunks=(2, 16, 16)), bandwidth=2.0,
                                           n_seeds=100, foreground=False)
    assert clustering.background is not None and clustering.n_clusters == 2
    assert_same_labeling(gt, labels.compute())


def test_subsample_is_bounded_and_drawn_from_foreground_only():
    gt = disks((64, 64), [(20, 20), (40, 44)], 8)
    emb = synthetic_embeddings(gt, [[5, 5], [9, 9]], noise=0.0)
    points = sample_foreground(da.from_array(emb, chunks=(3, 16, 16)), max_points=100)
    assert points.shape == (100, 2) and (points > 4).all()
    few = sample_foreground(emb, max_points=10**6)  # fewer foreground voxels than asked: all
    assert few.shape[0] == int((gt > 0).sum())


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([(3, 64, 64), (3, 16, 16), (3, 8, 40), (3, 64, 7)]), st.integers(1, 3000),
       st.integers(0, 3), st.sampled_from([(10, 10), (20, 20), (40, 44)]))
def test_subsample_does_not_depend_on_the_chunking(chunks, max_points, seed, centre):
    """Run in memory, Run through zarr tiles and a cluster must draw the same points (and so
    find the same modes): the sample is a function of the image, not of its chunks. Sparse
    foregrounds (one small disk) take the second read."""
    gt = disks((64, 64), [centre], 4 if centre == (10, 10) else 12)
    emb = synthetic_embeddings(gt, [[5, 5]], noise=0.3)
    whole = sample_foreground(emb, max_points=max_points, seed=seed)
    chunked = sample_foreground(da.from_array(emb, chunks=chunks), max_points=max_points, seed=seed)
    np.testing.assert_array_equal(whole, chunked)
    assert whole.shape[0] == min(max_points, int((gt > 0).sum()))


def test_no_foreground_gives_empty_labels():
    emb = np.full((3, 10, 10), -5.0, np.float32)
    labels, clustering = segment_instances(emb, bandwidth=1.0)
    assert clustering.modes.shape == (0, 2) and clustering.n_clusters == 0
    assert labels.compute().max() == 0


def test_clustering_round_trips_through_dict():
    clustering = Clustering(np.arange(6, dtype=np.float32).reshape(2, 3), 1.5, 0.4, True, None, 9)
    back = Clustering.from_dict(clustering.to_dict())
    np.testing.assert_array_equal(back.modes, clustering.modes)
    assert (back.bandwidth, back.fg_threshold, back.n_points) == (1.5, 0.4, 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"bandwidth": 0}, "bandwidth"), ({"bandwidth": -1.0}, "bandwidth"),
     ({"fg_threshold": 1.0}, "fg_threshold"), ({"n_seeds": 0}, "n_seeds"),
     ({"max_points": 0}, "max_points")],
)
def test_bad_clustering_arguments(kwargs, message):
    emb = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(ShiftSegError, match=message):
        cluster_embeddings(emb, **{"bandwidth": 1.0, **kwargs})


def test_bad_labelling_arguments():
    clusters = np.zeros((5, 5), np.int32)
    with pytest.raises(ShiftSegError, match="connectivity"):
        label_clusters(clusters, connectivity=3)
    with pytest.raises(ShiftSegError, match="min_size"):
        label_clusters(clusters, min_size=-1)
    with pytest.raises(ShiftSegError, match="embeddings"):
        cluster_embeddings(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError):
        label_instances(np.zeros((3, 8, 8), np.float32), "modes")
    clustering = Clustering(np.zeros((1, 4), np.float32), 1.0)
    with pytest.raises(ShiftSegError, match="cluster these embeddings again"):
        label_instances(np.zeros((3, 8, 8), np.float32), clustering)
