"""Post-processing of instance labels: merge close fragments, absorb small ones, fill holes.

Embeddings are built directly (chosen codes + a foreground logit channel) and the clustering is
given (its modes are the codes), so no network and no mean-shift run here.
"""

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from napari_shiftseg.inference.instances import (
    Clustering,
    label_clusters,
    label_instances,
    write_instances,
)
from napari_shiftseg.util._errors import ShiftSegError


def embeddings_of(clusters, codes, jitter=None, logit=None):
    """(E+1, *shape): voxel of cluster k gets codes[k-1] (+ jitter), fg logit +6 / -6."""
    codes = np.asarray(codes, np.float32)
    emb = np.zeros((codes.shape[1] + 1,) + clusters.shape, np.float32)
    fg = clusters > 0
    emb[:-1, fg] = codes[clusters[fg] - 1].T
    if jitter is not None:
        emb[:-1] += jitter
    emb[-1] = np.where(fg, 6.0, -6.0) if logit is None else logit
    return emb


def clustering_of(codes):
    return Clustering(np.asarray(codes, np.float32), bandwidth=1.0)


def run(clusters, codes, chunks, jitter=None, logit=None, **kwargs):
    emb = embeddings_of(clusters, codes, jitter, logit)
    emb = da.from_array(emb, chunks=(emb.shape[0],) + tuple(chunks))
    return label_instances(emb, clustering_of(codes), **kwargs).compute()


def same_labeling(expected, actual):
    """Equal up to renumbering: a bijection between the ids, with 0 <-> 0."""
    expected, actual = np.asarray(expected).ravel(), np.asarray(actual).ravel()
    if not ((expected == 0) == (actual == 0)).all():
        return False
    pairs = np.unique(np.stack([expected, actual]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


# --------------------------------------------------------------------------- (a), (b) merge


def two_halves():
    clusters = np.zeros((12, 14), np.int32)
    clusters[2:10, 2:7], clusters[2:10, 7:12] = 1, 2
    return clusters


def test_adjacent_fragments_with_close_means_are_merged():
    clusters = two_halves()
    codes = [[0.0, 0.0], [1.0, 0.0]]
    assert run(clusters, codes, (5, 4)).max() == 2  # the split this repairs
    merged = run(clusters, codes, (5, 4), merge_distance=1.5)
    assert merged.max() == 1 and ((merged == 1) == (clusters > 0)).all()


def test_touching_objects_with_far_means_are_never_merged():
    clusters = two_halves()
    codes = [[0.0, 0.0], [3.0, 4.0]]  # exactly 5 apart
    for distance in (1.0, 4.99, 5.0):  # "closer than": 5 is not closer than 5
        result = run(clusters, codes, (5, 4), merge_distance=distance, absorb_small=True,
                     min_size=3, fill_holes=True)
        assert same_labeling(clusters, result), distance
    assert run(clusters, codes, (5, 4), merge_distance=5.01).max() == 1


def test_the_foreground_logit_does_not_count_for_merging():
    clusters = two_halves()
    logit = np.where(clusters == 1, 6.0, np.where(clusters == 2, 60.0, -6.0))
    result = run(clusters, [[0.0], [0.5]], (12, 14), logit=logit, merge_distance=1.0)
    assert result.max() == 1


def test_merging_uses_the_mean_not_single_voxels():
    clusters = two_halves()
    jitter = np.zeros((1,) + clusters.shape, np.float32)
    jitter[0, 2, 6], jitter[0, 2, 7] = 1.0, -1.0  # two touching voxels close, the means far
    result = run(clusters, [[0.0], [3.0]], (4, 4), jitter=jitter, merge_distance=2.0)
    assert same_labeling(clusters, result)


def test_separate_objects_that_do_not_touch_are_not_merged():
    clusters = np.zeros((10, 10), np.int32)
    clusters[1:4, 1:4], clusters[6:9, 6:9] = 1, 1
    clusters[1:4, 6:9] = 2
    result = run(clusters, [[0.0], [0.1]], (3, 3), merge_distance=1.0, connectivity=1)
    assert result.max() == 3


# --------------------------------------------------------------------------- (c) absorb


def test_small_fragment_is_absorbed_and_isolated_one_dropped():
    clusters = np.zeros((14, 14), np.int32)
    clusters[2:8, 2:8] = 1            # big object
    clusters[3:5, 8] = 2              # 2-voxel fragment touching it, another cluster
    clusters[11:13, 11] = 2           # isolated 2-voxel object
    codes = [[0.0], [9.0]]
    for absorb, expected_fragment in ((False, 0), (True, 1)):
        result = run(clusters, codes, (5, 6), min_size=5, absorb_small=absorb)
        assert result.max() == 1
        assert (result[2:8, 2:8] == 1).all()
        assert (result[3:5, 8] == expected_fragment).all()
        assert (result[11:13, 11] == 0).all()


def test_small_fragment_joins_the_neighbour_it_touches_most():
    clusters = np.zeros((12, 12), np.int32)
    clusters[1:10, 1:5] = 1           # left object
    clusters[1:10, 6:11] = 3          # right object
    clusters[2:6, 5] = 2              # 4-voxel sliver between them: 4 contacts each side ...
    clusters[5, 4] = 2                # ... plus one voxel cut into the left: 6 left, 4 right
    codes = [[0.0], [20.0], [40.0]]
    result = run(clusters, codes, (4, 5), min_size=6, absorb_small=True)
    assert result.max() == 2
    assert result[3, 5] == result[1, 1] != result[1, 10]


def test_absorption_ties_do_not_depend_on_the_chunks():
    clusters = np.zeros((9, 9), np.int32)
    clusters[0:9, 0:4], clusters[0:9, 5:9] = 1, 3
    clusters[4, 4] = 2                # one voxel, one contact with each side
    codes = [[0.0], [20.0], [40.0]]
    results = [run(clusters, codes, chunks, min_size=3, absorb_small=True)
               for chunks in ((9, 9), (4, 4), (5, 2), (1, 9))]
    for result in results:
        assert result.max() == 2 and result[4, 4] == result[0, 0]  # first voxel first


# --------------------------------------------------------------------------- (d) holes


def test_hole_inside_one_object_is_filled_others_are_not():
    clusters = np.zeros((16, 20), np.int32)
    clusters[1:8, 1:8] = 1
    clusters[3:6, 3:6] = 0            # a hole: filled
    clusters[9:15, 1:8] = 1
    clusters[11:13, 0:3] = 0          # a notch open to the border: not filled
    clusters[2:9, 10:15] = 1
    clusters[2:9, 15:19] = 2          # two objects around one region ...
    clusters[4:7, 13:17] = 0          # ... not filled
    result = run(clusters, [[0.0], [9.0]], (5, 6), fill_holes=True)
    plain = run(clusters, [[0.0], [9.0]], (5, 6))
    assert same_labeling(plain[clusters > 0], result[clusters > 0])
    assert (result[3:6, 3:6] == result[1, 1]).all()
    assert (result[11:13, 0:3] == 0).all()
    assert (result[4:7, 13:17] == 0).all()
    assert ((result > 0) == ((clusters > 0) | np.pad(np.ones((3, 3), bool), ((3, 10), (3, 14))))).all()


def test_hole_holding_a_dropped_speck_is_filled():
    clusters = np.zeros((11, 11), np.int32)
    clusters[1:10, 1:10] = 1
    clusters[3:8, 3:8] = 0
    clusters[5, 5] = 2                # dropped by min_size: then the hole is filled
    result = run(clusters, [[0.0], [9.0]], (4, 4), min_size=3, fill_holes=True)
    assert (result[1:10, 1:10] == 1).all() and result.max() == 1


@given(st.integers(0, 2**16), st.sampled_from([(3, 3), (4, 7), (20, 20), (2, 9)]))
def test_fill_holes_of_one_object_equals_binary_fill_holes(seed, chunks):
    rng = np.random.default_rng(seed)
    components, _ = ndimage.label(rng.random((20, 20)) < 0.6, structure=np.ones((3, 3)))
    mask = components == np.argmax(np.bincount(components.ravel())[1:]) + 1  # largest one
    result = label_clusters(da.from_array(mask.astype(np.int32), chunks=chunks), connectivity=2,
                            fill_holes=True).compute()
    assert result.max() == 1
    np.testing.assert_array_equal(result > 0, ndimage.binary_fill_holes(mask))


# --------------------------------------------------------------------------- (e) exact


def reference(clusters, values, connectivity, merge_distance, absorb, min_size, fill):
    """Whole-array numpy version of the post-processing, written independently."""
    structure = ndimage.generate_binary_structure(clusters.ndim, connectivity)
    labels = np.zeros(clusters.shape, np.int64)
    for k in np.unique(clusters[clusters > 0]):
        lab, _ = ndimage.label(clusters == k, structure=structure)
        labels[lab > 0] = lab[lab > 0] + labels.max()
    n = labels.max() + 1
    sizes = np.bincount(labels.ravel(), minlength=n)
    contacts = {}
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        for x, y in zip(a, b):
            if x and y and x != y:
                key = (min(x, y), max(x, y))
                contacts[key] = contacts.get(key, 0) + 1
    group = np.arange(n)

    def join(x, y):
        gx, gy = group[x], group[y]
        group[group == gy] = gx

    if merge_distance:
        means = [values[:, labels == i].mean(axis=1) if i else None for i in range(n)]
        for x, y in contacts:
            if np.linalg.norm(means[x].astype(np.float64) - means[y]) < merge_distance:
                join(x, y)
    first = {i: np.flatnonzero(labels.ravel() == i)[0] for i in range(1, n)}
    while absorb and min_size > 1:
        gsize = {g: sizes[group == g].sum() for g in set(group[1:])}
        gfirst = {g: min(first[i] for i in range(1, n) if group[i] == g) for g in gsize}
        gcontact = {}
        for (x, y), c in contacts.items():
            gx, gy = group[x], group[y]
            if gx != gy:
                gcontact.setdefault(gx, {}).setdefault(gy, 0)
                gcontact.setdefault(gy, {}).setdefault(gx, 0)
                gcontact[gx][gy] += c
                gcontact[gy][gx] += c
        picks = [(g, min(nb, key=lambda t: (-nb[t], gfirst[t]))) for g, nb in gcontact.items()
                 if gsize[g] < min_size]
        if not picks:
            break
        members = [(np.flatnonzero(group == g)[0], np.flatnonzero(group == t)[0]) for g, t in picks]
        for x, y in members:
            join(x, y)
    out = group[labels]
    out[labels == 0] = 0
    for g in np.unique(out[out > 0]):
        if (out == g).sum() < max(min_size, 1):
            out[out == g] = 0
    if fill:
        holes, m = ndimage.label(out == 0)
        for h in range(1, m + 1):
            region = holes == h
            border = any(np.take(region, e, axis=ax).any() for ax in range(out.ndim)
                         for e in (0, -1))
            around = np.unique(out[ndimage.binary_dilation(region) & ~region])
            if not border and around.size == 1:
                out[region] = around[0]
    return out


@st.composite
def configurations(draw):
    ndim = draw(st.sampled_from([2, 2, 3]))
    shape = tuple(draw(st.integers(2, 12 if ndim == 2 else 6)) for _ in range(ndim))
    chunkings = [tuple(draw(st.integers(1, s)) for s in shape) for _ in range(2)]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    k = draw(st.integers(1, 3))
    density = draw(st.sampled_from([0.5, 0.8, 0.95]))
    clusters = np.where(rng.random(shape) < density, rng.integers(1, k + 1, shape), 0)
    # 1-D codes 0, 1.5, 4 with jitter < 0.75: each voxel stays nearest to its own mode
    jitter = rng.uniform(-0.7, 0.7, (1,) + shape).astype(np.float32)
    options = {
        "connectivity": draw(st.integers(1, ndim)),
        "min_size": draw(st.sampled_from([0, 2, 3, 5])),
        "merge_distance": draw(st.sampled_from([None, 0.0, 1.0, 2.0, 3.0])),
        "absorb_small": draw(st.booleans()),
        "fill_holes": draw(st.booleans()),
    }
    return clusters.astype(np.int32), jitter, chunkings, options


CODES = [[0.0], [1.5], [4.0]]


@given(configurations())
def test_post_processing_is_exact_for_every_chunking(case):
    clusters, jitter, chunkings, options = case
    codes = CODES[: max(int(clusters.max()), 1)]
    emb = embeddings_of(clusters, codes, jitter)
    clustering = clustering_of(codes)
    whole = label_instances(emb, clustering, **options).compute()
    values = emb[:-1]
    expected = reference(clusters, values, options["connectivity"], options["merge_distance"],
                         options["absorb_small"], options["min_size"], options["fill_holes"])
    assert same_labeling(expected, whole)
    assert sorted(np.unique(whole[whole > 0])) == list(range(1, whole.max() + 1))
    for chunks in chunkings:
        lazy = label_instances(da.from_array(emb, chunks=(emb.shape[0],) + chunks), clustering,
                               **options).compute()
        assert same_labeling(whole, lazy), chunks
        store = zarr.create_array(zarr.storage.MemoryStore(), shape=clusters.shape, chunks=chunks,
                                  dtype="i4")
        count = write_instances(da.from_array(emb, chunks=(emb.shape[0],) + chunks), clustering,
                                store, **options)
        np.testing.assert_array_equal(store[...], lazy)
        assert count == lazy.max()


@pytest.mark.parametrize("fill", [-6.0, 6.0])
def test_all_options_on_an_empty_and_a_full_volume(tmp_path, fill):
    emb = np.zeros((3, 7, 9), np.float32)
    emb[-1] = fill
    clustering = clustering_of([[0.0, 0.0]])
    options = {"merge_distance": 2.0, "absorb_small": True, "min_size": 3, "fill_holes": True}
    lazy = label_instances(da.from_array(emb, chunks=(3, 3, 4)), clustering, **options).compute()
    out = zarr.create_array(tmp_path / "l.zarr", shape=(7, 9), chunks=(3, 4), dtype="i4")
    count = write_instances(da.from_array(emb, chunks=(3, 3, 4)), clustering, out, **options)
    np.testing.assert_array_equal(out[...], lazy)
    assert count == lazy.max() == int(fill > 0)
    assert (lazy == int(fill > 0)).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"merge_distance": -1.0}, "merge_distance"), ({"merge_distance": float("nan")}, "merge_distance"),
     ({"merge_distance": "2"}, "merge_distance"), ({"absorb_small": "yes"}, "absorb_small"),
     ({"fill_holes": 1}, "fill_holes")],
)
def test_bad_post_processing_arguments(kwargs, message):
    emb = embeddings_of(two_halves(), [[0.0], [1.0]])
    with pytest.raises(ShiftSegError, match=message):
        label_instances(emb, clustering_of([[0.0], [1.0]]), **kwargs)
