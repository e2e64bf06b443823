"""Per-instance measurements (napari_shiftseg.imaging.measure): against scikit-image, chunk-independent."""

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops_table

from napari_shiftseg.imaging.measure import measure, write_table
from napari_shiftseg.util._errors import ShiftSegError


def _scene(shape, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, shape).astype(np.int32)
    image = rng.random((2, *shape)).astype(np.float32)
    return labels, image


def test_matches_scikit_image():
    labels, image = _scene((20, 30, 25), 0)
    table = measure(labels, image[0], spacing=(3.0, 0.5, 0.5))
    ref = regionprops_table(labels, image[0], properties=("label", "area", "centroid", "bbox",
                                                           "intensity_mean", "intensity_max"))
    np.testing.assert_array_equal(table["index"], ref["label"])
    np.testing.assert_array_equal(table["voxels"], ref["area"])
    np.testing.assert_allclose(table["size"], ref["area"] * 0.75)
    for a, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}"], ref[f"centroid-{a}"])
        np.testing.assert_array_equal(table[f"bbox_{axis}_start"], ref[f"bbox-{a}"])
        np.testing.assert_array_equal(table[f"bbox_{axis}_stop"], ref[f"bbox-{a + 3}"])
    np.testing.assert_allclose(table["mean_intensity"], ref["intensity_mean"], rtol=1e-6)
    np.testing.assert_allclose(table["max_intensity"], ref["intensity_max"])


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=2, max_size=3), chunk=st.integers(1, 7),
       seed=st.integers(0, 2**16))
def test_blockwise_equals_whole(shape, chunk, seed):
    labels, image = _scene(shape, seed)
    emb = image[:2]
    whole = measure(labels, image, embeddings=emb, channel_axis=0)
    lazy = measure(da.from_array(labels, chunks=chunk), da.from_array(image, chunks=chunk),
                   embeddings=da.from_array(emb, chunks=chunk), channel_axis=0)
    assert list(lazy) == list(whole)
    for name in whole:
        np.testing.assert_allclose(lazy[name], whole[name], rtol=1e-9, err_msg=name)
    assert {"mean_intensity_c0", "max_intensity_c1", "embedding_mean_1"} <= set(whole)


def test_empty_labels_and_csv(tmp_path):
    empty = measure(np.zeros((5, 5), np.int32), np.ones((5, 5)), embeddings=np.ones((2, 5, 5)))
    full = measure(np.ones((5, 5), np.int32), np.ones((5, 5)), embeddings=np.ones((2, 5, 5)))
    assert list(empty) == list(full) and all(v.size == 0 for v in empty.values())
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:4] = 7
    path = write_table(measure(labels), tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("index,voxels,size,centroid_y,centroid_x")
    assert lines[1].split(",")[:5] == ["7", "6", "6.0", "1.5", "2.0"]


@pytest.mark.parametrize("kwargs, message", [
    ({"spacing": (1.0,)}, "voxel size must be 2 positive numbers"),
    ({"spacing": (1.0, -2.0)}, "voxel size must be 2 positive numbers"),
    ({"image": np.zeros((4, 5))}, "must have the same shape"),
    ({"image": np.zeros((6, 6)), "channel_axis": 4}, "channel_axis 4 is not an axis"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ShiftSegError, match=message):
        measure(np.ones((6, 6), np.int32), **kwargs)
    with pytest.raises(ShiftSegError, match="whole numbers"):
        measure(np.ones((6, 6), np.float32))
