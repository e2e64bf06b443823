"""Object-size resampling (napari_shiftseg.imaging.rescale) and its use by segment_array."""

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from napari_shiftseg.imaging import metrics, rescale
from napari_shiftseg.inference.evaluate import segment_array
from napari_shiftseg.network.modelio import Model, load_bundled
from napari_shiftseg.synthetic import synth
from napari_shiftseg.util._errors import ShiftSegError


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=3), factor=st.integers(2, 4),
       seed=st.integers(0, 2**16))
def test_labels_survive_an_integer_up_and_down_round_trip(shape, factor, seed):
    labels = np.random.default_rng(seed).integers(0, 5, shape).astype(np.int32)
    big = rescale.resize_labels(labels, [n * factor for n in shape])
    assert big.shape == tuple(n * factor for n in shape)
    assert set(np.unique(big)) <= set(np.unique(labels))  # nearest neighbour: no new ids
    np.testing.assert_array_equal(rescale.resize_labels(big, shape), labels)


def test_linear_resampling_keeps_a_ramp_linear():
    ramp = np.arange(16, dtype=np.float32)[None, :].repeat(4, 0)
    out = rescale.resize_image(ramp, (1, 2))
    assert out.shape == (4, 32)
    # Output pixel centre i sits at input coordinate (i + 0.5) / 2 - 0.5 (clamped at the ends).
    expected = np.clip((np.arange(32) + 0.5) / 2 - 0.5, 0, 15)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_downsampling_does_not_alias():
    checker = (np.indices((32, 32)).sum(0) % 2).astype(np.float32)  # highest frequency
    out = rescale.resize_image(checker, 0.5)
    assert out.shape == (16, 16)
    assert np.abs(out - 0.5).max() < 0.15  # plain decimation would give all 0 or all 1


@pytest.mark.parametrize("factor", [0.5, 1.7, (1, 2.0, 0.5)])
def test_dask_resampling_is_lazy_and_equals_numpy(factor):
    image = np.random.default_rng(0).random((12, 30, 26)).astype(np.float32)
    lazy = rescale.resize_image(da.from_array(image, chunks=(5, 8, 8)), factor)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), rescale.resize_image(image, factor), atol=1e-5)
    labels = (image * 7).astype(np.int32)
    shape = rescale.working_shape(image.shape, factor)
    lazy_labels = rescale.resize_labels(da.from_array(labels, chunks=5), shape)
    assert isinstance(lazy_labels, da.Array)
    np.testing.assert_array_equal(lazy_labels.compute(), rescale.resize_labels(labels, shape))


def test_scale_for_keeps_close_sizes_and_clamps():
    assert rescale.scale_for(19.0, 20.0) == 1.0           # within the tolerance
    assert rescale.scale_for(10.0, 20.0) == pytest.approx(2.0)
    assert rescale.scale_for(5.0, 20.0) == pytest.approx(3.0)   # clamped
    assert rescale.scale_for(80.0, 20.0) == pytest.approx(0.25)  # down too (real 80 px nuclei)
    assert rescale.scale_for(400.0, 20.0) == pytest.approx(0.1)  # clamped
    assert rescale.scale_for(30.0, 20.0) == pytest.approx(2 / 3)
    assert rescale.scale_for(None, 20.0) == 1.0 and rescale.scale_for(10.0, None) == 1.0


def test_estimate_diameter_of_disks():
    labels = np.zeros((80, 80), np.int32)
    yy, xx = np.indices(labels.shape)
    for i, (y, x) in enumerate([(15, 15), (15, 60), (60, 15), (60, 60)], 1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= 8 ** 2] = i
    assert rescale.estimate_diameter(labels) == pytest.approx(16, rel=0.05)
    labels[labels > 2] = 0
    assert rescale.estimate_diameter(labels) is None  # two objects: no estimate


@pytest.mark.parametrize("bad", [0, -3, float("nan"), "big", True])
def test_bad_diameters_are_refused(bad):
    with pytest.raises(ShiftSegError, match="object diameter must be 'auto' or a positive"):
        rescale.check_diameter(bad)


def test_model_diameter_reads_only_sane_values():
    assert rescale.model_diameter(Model(None, {"object_diameter": 20})) == 20.0
    for meta in ({}, {"object_diameter": -1}, {"object_diameter": "20"}, {"object_diameter": None}):
        assert rescale.model_diameter(Model(None, meta)) is None


def test_an_image_at_half_magnification_is_segmented_at_the_models_scale():
    """The same nuclei imaged at half the magnification (diameter ~10 px instead of ~21 px):
    resampling to the model's diameter recovers most of what the plain run merges."""
    model = load_bundled(2)
    assert rescale.model_diameter(model) == 20.0
    image, gt = synth.nuclei((256, 256), seed=3_000_000_028)  # a dev image, never a test seed
    small, small_gt = ndi.zoom(image, 0.5, order=1), gt[::2, ::2]
    plain = metrics.evaluate(small_gt, segment_array(small, model, diameter=None))["ap@0.5"]
    auto = segment_array(small, model)
    assert auto.shape == small.shape
    rescaled = metrics.evaluate(small_gt, auto)["ap@0.5"]
    given = metrics.evaluate(small_gt, segment_array(small, model, diameter=10.5))["ap@0.5"]
    assert rescaled > plain + 0.1 and given > plain + 0.1, (plain, rescaled, given)


