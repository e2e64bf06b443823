"""Tests for the synthetic disk / sphere generators."""

import math
import time

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from napari_shiftseg.synthetic import synth
from napari_shiftseg.util._errors import ShiftSegError


def ball_size(radius, ndim):
    """Pixels within ``radius`` of an integer centre, counted by brute force."""
    reach = math.floor(radius)
    grid = np.indices((2 * reach + 1,) * ndim) - reach
    return int(np.sum(np.sum(grid**2, axis=0) <= radius * radius))


def sizes(labels):
    return np.bincount(labels.ravel())[1:]


# --------------------------------------------------------------------------- lattice


@pytest.mark.parametrize(
    ("shape", "spacing", "radius", "partial", "expected"),
    [
        ((220, 220), 16, 5, True, 14 * 14),  # paper Fig. 2a: centres 8, 24, ..., 216
        ((220, 220), 16, 5, False, 13 * 13),  # 216 + 5 > 219 is clipped
        ((220, 220), 15, 5, True, 15 * 15),  # paper Fig. 2b
        # Centres 6, 18, 30, 42; 42 - 3 = 39 is inside along one axis, but a sphere centred at
        # 42 along two or more axes misses the volume: 3**3 + 3 * 3**2.
        ((40, 40, 40), 12, 3, True, 54),
        ((40, 40, 40), 12, 3, False, 3**3),
        ((30, 50), (10, 25), 4, False, 3 * 2),  # per-axis spacing
    ],
)
def test_lattice_counts_and_dtypes(shape, spacing, radius, partial, expected):
    image, labels = synth.lattice(shape, spacing, radius=radius, partial=partial)
    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert labels.max() == expected
    np.testing.assert_array_equal(np.unique(labels), np.arange(expected + 1))
    np.testing.assert_array_equal(image, (labels > 0).astype(np.float32))


@pytest.mark.parametrize(
    ("shape", "spacing", "radius"), [((220, 220), 15, 5), ((40, 40, 40), 12, 3)]
)
def test_lattice_objects_are_disks_of_the_right_size(shape, spacing, radius):
    _, labels = synth.lattice(shape, spacing, radius=radius, partial=False)
    expected = ball_size(radius, len(shape))
    assert np.all(sizes(labels) == expected)
    ideal = math.pi * radius**2 if len(shape) == 2 else 4 / 3 * math.pi * radius**3
    assert abs(expected - ideal) / ideal < 0.1
    # Every object is one connected blob and no two touch.
    assert connected_components(labels > 0, connectivity=len(shape)).max() == labels.max()


def test_lattice_is_a_window_onto_a_periodic_pattern():
    first, _ = synth.lattice((64, 80), 16, offset=(3, 5))
    shifted, _ = synth.lattice((64, 80), 16, offset=(3 + 16, 5 - 32))
    np.testing.assert_array_equal(first, shifted)
    # Moving the lattice by one spacing moves the picture by one spacing.
    moved, _ = synth.lattice((64, 80), 16, offset=(3 + 1, 5))
    np.testing.assert_array_equal(first[:-1], moved[1:])


def test_lattice_intensity_and_noise():
    clean, labels = synth.lattice((220, 220), 16, intensity=2.0)
    noisy, noisy_labels = synth.lattice((220, 220), 16, intensity=2.0, noise_std=0.1, seed=3)
    np.testing.assert_array_equal(labels, noisy_labels)
    assert set(np.unique(clean)) == {0.0, 2.0}
    assert noisy.dtype == np.float32
    assert abs(float(np.std(noisy - clean)) - 0.1) < 0.005


def test_elastic_keeps_labels_consistent_with_image():
    _, straight = synth.lattice((220, 220), 15)
    image, labels = synth.lattice((220, 220), 15, elastic_alpha=2.0, elastic_sigma=8.0, seed=1)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert not np.array_equal(labels, straight)
    assert np.mean((image > 0.5) == (labels > 0)) > 0.98
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    # Objects stay whole (nearest sampling may strand a pixel or two) and keep roughly their size.
    pieces = connected_components(labels > 0, connectivity=2)
    for obj in range(1, labels.max() + 1):
        counts = np.bincount(pieces[labels == obj])
        assert counts.max() >= 0.95 * counts.sum()
    inner_ids = np.unique(labels[20:-20, 20:-20])[1:]
    inner = sizes(labels)[inner_ids - 1]
    assert 60 < np.median(inner) < 100


# --------------------------------------------------------------------------- random objects


@pytest.mark.parametrize("shape", [(96, 128), (32, 48, 40)])
def test_random_objects_shapes_and_ranges(shape):
    image, labels = synth.random_objects(shape, radius=5, radius_jitter=1.0, seed=2)
    ndim = len(shape)
    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and labels.dtype == np.int32
    n = labels.max()
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    assert sizes(labels).min() >= ball_size(4, ndim) and sizes(labels).max() <= ball_size(6, ndim)
    assert image[labels == 0].max() == 0
    values = image[labels > 0]
    assert values.min() >= 0.6 and values.max() <= 1.0
    # Density 0.1 of the image (nominal object size).
    nominal = math.pi * 25 if ndim == 2 else 4 / 3 * math.pi * 125
    assert n == round(0.1 * math.prod(shape) / nominal)


def test_random_objects_n_objects_and_intensity_per_object():
    image, labels = synth.random_objects((64, 64), n_objects=7, intensity_range=(0.2, 0.9), seed=5)
    assert labels.max() == 7
    for obj in range(1, 8):
        assert np.unique(image[labels == obj]).size == 1


def assert_whole_disks(labels):
    """Every object is an unclipped, uncovered disk: a symmetric blob in an odd square box."""
    for region in regionprops(labels):
        height, width = region.image.shape
        assert height == width and height % 2 == 1
        np.testing.assert_array_equal(region.image, region.image[::-1])
        np.testing.assert_array_equal(region.image, region.image.T)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    shape=st.tuples(st.integers(24, 80), st.integers(24, 80)),
    radius=st.floats(2.0, 6.0),
    min_gap=st.integers(0, 3),
)
def test_random_objects_never_overlap_or_leave_the_image(seed, shape, radius, min_gap):
    _, labels = synth.random_objects(
        shape, density=0.15, radius=radius, radius_jitter=radius / 3, min_gap=min_gap, seed=seed
    )
    assert_whole_disks(labels)
    if min_gap >= 2:  # > sqrt(2): not even diagonal neighbours
        assert connected_components(labels > 0, connectivity=2).max() == labels.max()


def test_random_objects_deterministic_by_seed():
    kwargs = dict(noise_std=0.1, elastic_alpha=1.5)
    a = synth.random_objects((64, 64), seed=11, **kwargs)
    b = synth.random_objects((64, 64), seed=11, **kwargs)
    c = synth.random_objects((64, 64), seed=12, **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # Noise has its own random stream: switching it on does not move the objects.
    clean = synth.random_objects((64, 64), seed=11, elastic_alpha=1.5)
    np.testing.assert_array_equal(clean[1], a[1])


def test_random_objects_too_many_is_an_error():
    with pytest.raises(ShiftSegError, match="fit"):
        synth.random_objects((20, 20), n_objects=50)


# --------------------------------------------------------------------------- lazy volumes

HUGE = (512, 1024, 1024)  # 2 GiB of float32 if it were ever materialised
CHUNKS = (32, 96, 96)


def test_lazy_build_is_instant_and_slicing_is_local(monkeypatch):
    start = time.perf_counter()
    image, labels = synth.lazy_random_objects(HUGE, CHUNKS, seed=4)
    assert time.perf_counter() - start < 1.0
    assert image.shape == labels.shape == HUGE
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert image.nbytes == 2 * 1024**3

    generated = []
    original = synth._LazyPlan.chunk

    def counting(plan, block_info, want_image):
        generated.append(block_info[None]["chunk-location"])
        return original(plan, block_info, want_image)

    monkeypatch.setattr(synth._LazyPlan, "chunk", counting)
    with dask.config.set(scheduler="synchronous"):
        piece = image[40, 100:120, 5:50].compute()
    assert piece.shape == (20, 45)
    assert generated == [(1, 1, 0)]


def test_lazy_chunks_are_deterministic_and_consistent():
    image, labels = synth.lazy_random_objects(HUGE, CHUNKS, seed=4)
    again_image, again_labels = synth.lazy_random_objects(HUGE, CHUNKS, seed=4)
    block = (3, 5, 7)
    chunk_image = image.blocks[block].compute()
    chunk_labels = labels.blocks[block].compute()
    np.testing.assert_array_equal(chunk_image, image.blocks[block].compute())
    np.testing.assert_array_equal(chunk_image, again_image.blocks[block].compute())
    np.testing.assert_array_equal(chunk_labels, again_labels.blocks[block].compute())
    # A slice through the big array equals the same region of the chunk computed alone.
    z0, y0, x0 = (b * c for b, c in zip(block, CHUNKS))
    region = (z0 + 4, slice(y0, y0 + 96), slice(x0 + 10, x0 + 30))
    np.testing.assert_array_equal(image[region].compute(), chunk_image[4, :, 10:30])
    np.testing.assert_array_equal(labels[region].compute(), chunk_labels[4, :, 10:30])

    # No noise: the image is exactly the objects' intensities on 0.
    assert np.array_equal(chunk_image > 0, chunk_labels > 0)
    assert chunk_labels.max() > 0
    # Objects stay away from the chunk border, so none can cross into a neighbour.
    for axis in range(3):
        assert not np.take(chunk_labels, [0, -1], axis=axis).any()
    n_objects = np.unique(chunk_labels).size - 1
    assert connected_components(chunk_labels > 0, connectivity=3).max() == n_objects
    different = synth.lazy_random_objects(HUGE, CHUNKS, seed=5)[1].blocks[block].compute()
    assert not np.array_equal(different, chunk_labels)


def test_lazy_label_ids_unique_across_chunks():
    image, labels = synth.lazy_random_objects((40, 60, 70), (20, 30, 35), noise_std=0.1, seed=0)
    volume = labels.compute()
    ids_per_chunk = [
        set(np.unique(labels.blocks[b].compute())) - {0} for b in np.ndindex(labels.numblocks)
    ]
    assert all(ids_per_chunk)
    assert sum(len(ids) for ids in ids_per_chunk) == len(set().union(*ids_per_chunk))
    assert connected_components(volume > 0, connectivity=3).max() == np.unique(volume).size - 1
    noisy = image.compute()
    assert noisy.dtype == np.float32 and 0.08 < float(noisy[volume == 0].std()) < 0.12


def test_lazy_2d_with_ragged_edge_chunks():
    image, labels = synth.lazy_random_objects((100, 75), 40, seed=1)
    assert labels.chunks == ((40, 40, 20), (40, 35))
    volume = labels.compute()
    assert volume.shape == (100, 75)
    assert np.array_equal(image.compute() > 0, volume > 0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda: synth.lattice((64,), 16),
        lambda: synth.lattice((2, 64, 64, 64), 16),
        lambda: synth.lattice((64, 0), 16),
        lambda: synth.lattice((64, 64.5), 16),
        lambda: synth.lattice("64x64", 16),
        lambda: synth.lattice((64, 64), 10, radius=5),
        lambda: synth.lattice((64, 64), 0),
        lambda: synth.lattice((64, 64), (16, 16, 16)),
        lambda: synth.lattice((64, 64), 16, radius=0),
        lambda: synth.lattice((64, 64), 16, radius=float("nan")),
        lambda: synth.lattice((64, 64), 16, offset=(1.5, 2)),
        lambda: synth.lattice((64, 64), 16, noise_std=-0.1),
        lambda: synth.lattice((64, 64), 16, elastic_sigma=0),
        lambda: synth.lattice((64, 64), 16, seed=-1),
        lambda: synth.random_objects((64, 64), radius_jitter=5),
        lambda: synth.random_objects((64, 64), n_objects=-1),
        lambda: synth.random_objects((64, 64), density=0.9),
        lambda: synth.random_objects((64, 64), intensity_range=(1.0, 0.5)),
        lambda: synth.random_objects((64, 64), intensity_range=0.5),
        lambda: synth.random_objects((64, 64), min_gap=-1),
        lambda: synth.lazy_random_objects((64, 64), 8),
        lambda: synth.lazy_random_objects((64, 64), (32, 32, 32)),
        lambda: synth.lazy_random_objects((2**20, 2**20, 2**20), 64),
    ],
)
def test_bad_input_raises_shiftseg_error(call):
    with pytest.raises(ShiftSegError):
        call()
