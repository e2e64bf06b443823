"""Reading and validating training image + label files (napari_shiftseg.files.data)."""

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_shiftseg.files.data import (
    load_training_pair,
    read_array,
    validate_image,
    validate_labels,
    validate_pair,
)
from napari_shiftseg.util._errors import ShiftSegError


def _pair(shape=(20, 24)):
    rng = np.random.default_rng(0)
    labels = np.zeros(shape, np.int32)
    labels[2:6, 3:8] = 1
    labels[10:14, 10:15] = 7
    image = (labels > 0).astype(np.float32) + rng.normal(0, 0.1, shape).astype(np.float32)
    return image, labels


def _write(path, array):
    suffix = path.suffix
    if suffix == ".tif":
        tifffile.imwrite(path, array)
    elif suffix == ".npy":
        np.save(path, array)
    else:
        zarr.save_array(str(path), array)
    return path


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
def test_round_trip(tmp_path, suffix):
    image, labels = _pair()
    img = _write(tmp_path / f"image{suffix}", image)
    lab = _write(tmp_path / f"labels{suffix}", labels.astype(np.uint16))
    got_image, got_labels = load_training_pair(img, lab, ndim=2)
    assert got_image.dtype == np.float32 and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_labels, labels)


def test_zarr_groups(tmp_path):
    image, _ = _pair()
    single = zarr.open_group(str(tmp_path / "single.zarr"), mode="w")
    single.create_array("raw", shape=image.shape, dtype=image.dtype)[...] = image
    np.testing.assert_array_equal(read_array(tmp_path / "single.zarr"), image)
    ome = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    ome.create_array("0", shape=image.shape, dtype=image.dtype)[...] = image
    ome.create_array("1", shape=(10, 12), dtype=image.dtype)
    # Without OME-Zarr metadata a group of several arrays is not guessed at: name one.
    np.testing.assert_array_equal(read_array(tmp_path / "ome.zarr" / "0"), image)
    with pytest.raises(ShiftSegError, match="name one"):
        read_array(tmp_path / "ome.zarr")
    several = zarr.open_group(str(tmp_path / "several.zarr"), mode="w")
    several.create_array("a", shape=(2, 2), dtype="f4")
    several.create_array("b", shape=(2, 2), dtype="f4")
    with pytest.raises(ShiftSegError, match="name one"):
        read_array(tmp_path / "several.zarr")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ShiftSegError, match="does not exist"):
        read_array(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ShiftSegError, match="unknown file type"):
        read_array(tmp_path / "notes.txt")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ShiftSegError, match="broken.tif is not a readable TIFF file"):
        read_array(tmp_path / "broken.tif")
    image, labels = _pair()
    img = _write(tmp_path / "image.npy", image)
    with pytest.raises(ShiftSegError, match="does not exist"):
        load_training_pair(img, tmp_path / "labels.npy")


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShiftSegError, match="not a readable .npy file"):
        read_array(tmp_path / "objects.npy")


def test_shape_mismatch(tmp_path):
    image, labels = _pair()
    img = _write(tmp_path / "image.tif", image)
    lab = _write(tmp_path / "labels.tif", labels[:, :-1])
    with pytest.raises(ShiftSegError, match=r"image.tif / labels.tif: .*differ"):
        load_training_pair(img, lab)


def test_wrong_dimensionality():
    image, labels = _pair()
    with pytest.raises(ShiftSegError, match="the model is 3D but the image is 2D"):
        validate_pair(image, labels, ndim=3)
    with pytest.raises(ShiftSegError, match="2D .* or 3D"):
        validate_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ShiftSegError, match="2D .* or 3D"):
        validate_labels(np.zeros(7, np.int32))


def test_singleton_axes_are_dropped():
    image, labels = _pair()
    got_image, got_labels = validate_pair(image[None], labels[None, None])
    assert got_image.shape == got_labels.shape == image.shape
    # A genuinely thin 2D image keeps both axes.
    assert validate_image(np.zeros((1, 9))).shape == (1, 9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image(bad):
    image, labels = _pair()
    image[3, 4] = bad
    with pytest.raises(ShiftSegError, match="NaN or infinite"):
        validate_pair(image, labels)


def test_image_dtypes():
    with pytest.raises(ShiftSegError, match="real numbers"):
        validate_image(np.zeros((4, 4), dtype=complex))
    with pytest.raises(ShiftSegError, match="real numbers"):
        validate_image(np.zeros((4, 4), dtype=bool))
    with pytest.raises(ShiftSegError, match="real numbers"):
        validate_image(np.full((4, 4), "a"))
    assert validate_image(np.zeros((4, 4), np.uint16)).dtype == np.float32


def test_non_integer_labels():
    _, labels = _pair()
    with pytest.raises(ShiftSegError, match="fractional"):
        validate_labels(labels + 0.5)
    nan_labels = labels.astype(np.float32)
    nan_labels[0, 0] = np.nan
    with pytest.raises(ShiftSegError, match="fractional or NaN"):
        validate_labels(nan_labels)
    with pytest.raises(ShiftSegError, match="yes/no mask"):
        validate_labels(labels > 0)
    with pytest.raises(ShiftSegError, match="negative"):
        validate_labels(labels - 1)
    with pytest.raises(ShiftSegError, match="whole-number"):
        validate_labels(np.full((4, 4), "a"))
    with pytest.raises(ShiftSegError, match="above"):
        validate_labels(np.full((4, 4), 2**40, np.int64))


@given(hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=6),
                  elements=st.integers(0, 2**31 - 1)),
       st.sampled_from([np.int64, np.uint32, np.float64]))
def test_valid_labels_keep_their_ids(labels, dtype):
    """Any non-negative whole-number label image passes unchanged, whatever its dtype."""
    if dtype is np.float64:
        labels = labels % 2**20  # float64 holds these ids exactly
    got = validate_labels(labels.astype(dtype))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, labels.astype(np.int64))
