"""Tests for the realistic synthetic nuclei generator (synth.nuclei) and `shiftseg synth nuclei`."""

import math
import time

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_shiftseg.cli import main
from napari_shiftseg.synthetic import synth
from napari_shiftseg.util._errors import ShiftSegError


def touching_pairs(labels):
    """Pairs of different labels that share a face."""
    pairs = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        x, y = a[1:], a[:-1]
        m = (x > 0) & (y > 0) & (x != y)
        pairs |= set(zip(np.minimum(x[m], y[m]).tolist(), np.maximum(x[m], y[m]).tolist()))
    return pairs


def border_ids(labels):
    ids = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        ids |= set(np.unique(a[[0, -1]]).tolist())
    return ids - {0}


def assert_exact_labels(labels):
    n = int(labels.max())
    assert labels.dtype == np.int32
    assert set(np.unique(labels).tolist()) - {0} == set(range(1, n + 1))  # 1..N, no gaps
    assert labels.min() >= 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        _, parts = ndimage.label(labels[box] == index)
        assert parts == 1, f"label {index} has {parts} pieces"


@pytest.fixture(scope="module")
def images2d():
    return [synth.nuclei((256, 256), seed=s) for s in range(4)]


def test_deterministic_and_seed_dependent():
    a = synth.nuclei((96, 96), seed=5)
    b = synth.nuclei((96, 96), seed=5)
    c = synth.nuclei((96, 96), seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.float32 and a[1].dtype == np.int32


def test_labels_exact_connected_and_sized(images2d):
    for image, labels in images2d:
        assert image.shape == labels.shape == (256, 256)
        assert_exact_labels(labels)
        inner = sorted(set(range(1, labels.max() + 1)) - border_ids(labels))
        sizes = np.bincount(labels.ravel())[1:][np.array(inner) - 1]
        radii = np.sqrt(sizes / math.pi)  # equivalent radius of unclipped nuclei
        assert radii.min() >= 0.8 * 4 and radii.max() <= 1.1 * 25


def test_clusters_touch(images2d):
    # Clustered placement makes neighbours touch (the case where thresholding merges them).
    counts = [len(touching_pairs(labels)) for _, labels in images2d]
    assert sum(counts) >= 20 and min(counts) >= 1


def test_radius_range_is_respected():
    _, labels = synth.nuclei((200, 200), seed=1, radius=(6, 8), density=0.3)
    inner = sorted(set(range(1, labels.max() + 1)) - border_ids(labels))
    radii = np.sqrt(np.bincount(labels.ravel())[1:][np.array(inner) - 1] / math.pi)
    assert len(radii) >= 10
    assert radii.min() >= 0.8 * 6 and radii.max() <= 1.1 * 8


def test_poisson_noise_variance_equals_mean():
    image, labels = synth.nuclei((256, 256), seed=1, photons=50, read_noise=0)
    background = ~ndimage.binary_dilation(labels > 0, iterations=8)
    both = background[:, 1:] & background[:, :-1]
    # Neighbour differences remove the smooth background; shot noise has variance = mean.
    var = float(np.var((image[:, 1:] - image[:, :-1])[both]) / 2)
    mean = float(image[background].mean())
    assert 0.8 < var / mean < 1.25
    # Without shot noise the same difference would be far smaller (integer counts: Poisson).
    assert np.all(image == np.round(image))


def test_dim_and_bright_nuclei():
    image, labels = synth.nuclei((256, 256), seed=3, background=0, read_noise=0, blur=0,
                                 texture=0)
    sizes = np.bincount(labels.ravel())[1:]
    means = ndimage.mean(image, labels, np.arange(1, labels.max() + 1))[sizes > 50]
    assert len(means) >= 10
    assert means.max() / means.min() > 5  # brightness spans ~10x


def test_3d_volume():
    start = time.perf_counter()
    image, labels = synth.nuclei((32, 64, 64), seed=2)
    assert time.perf_counter() - start < 3
    assert image.shape == labels.shape == (32, 64, 64)
    assert labels.max() >= 5
    assert_exact_labels(labels)
    assert touching_pairs(labels)


def test_fast_2d():
    synth.nuclei((256, 256), seed=0)  # warm-up
    start = time.perf_counter()
    synth.nuclei((256, 256), seed=1)
    assert time.perf_counter() - start < 0.5


def test_test_seeds_are_held_out_range():
    assert 900_000 in synth.TEST_SEEDS and 0 not in synth.TEST_SEEDS


@pytest.mark.parametrize("kwargs, words", [
    ({"shape": (4,)}, "shape"),
    ({"shape": (32, 32), "seed": -1}, "seed"),
    ({"shape": (32, 32), "radius": (8, 4)}, "radius"),
    ({"shape": (32, 32), "radius": 5}, "radius"),
    ({"shape": (32, 32), "density": 0.95}, "density"),
    ({"shape": (32, 32), "elongation": 0.5}, "elongation"),
    ({"shape": (32, 32), "cluster": 1.5}, "cluster"),
    ({"shape": (32, 32), "brightness_range": (0, 1)}, "brightness_range"),
    ({"shape": (32, 32), "blur": (1, 1, 1)}, "blur"),
    ({"shape": (32, 32), "photons": 0}, "photons"),
])
def test_bad_arguments(kwargs, words):
    shape = kwargs.pop("shape")
    with pytest.raises(ShiftSegError, match=words):
        synth.nuclei(shape, **kwargs)


@settings(max_examples=25, deadline=None)
@given(shape=st.one_of(st.lists(st.integers(1, 24), min_size=2, max_size=2),
                       st.lists(st.integers(1, 10), min_size=3, max_size=3)),
       seed=st.integers(0, 2**32))
def test_any_tiny_shape(shape, seed):
    image, labels = synth.nuclei(tuple(shape), seed=seed)
    assert image.shape == labels.shape == tuple(shape)
    assert np.all(np.isfinite(image))
    assert_exact_labels(labels)


def test_cli_synth_nuclei(tmp_path, capsys):
    assert main(["synth", "nuclei", "--shape", "64,64", "--seed", "4", "-o", str(tmp_path)]) == 0
    labels = tifffile.imread(tmp_path / "labels.tif")
    expected = synth.nuclei((64, 64), seed=4)[1]
    assert np.array_equal(labels, expected)
    assert "objects" in capsys.readouterr().out
    assert main(["synth", "nuclei", "--radius-range", "9,3", "-o", str(tmp_path)]) == 2
