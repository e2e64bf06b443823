"""Reading images lazily: TIFF, zarr, OME-Zarr, .npy, and clear errors for bad files."""

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_shiftseg.files import io
from napari_shiftseg.files.io import read_image, write_zarr
from napari_shiftseg.util._errors import ShiftSegError

IMAGE = np.arange(24 * 30, dtype=np.uint16).reshape(24, 30)


def test_uncompressed_tiff_is_memory_mapped(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", IMAGE)
    image = read_image(tmp_path / "a.tif")
    assert isinstance(image, np.memmap)
    np.testing.assert_array_equal(image, IMAGE)


@pytest.mark.parametrize("small", [True, False])
def test_compressed_tiff(tmp_path, monkeypatch, small):
    tifffile.imwrite(tmp_path / "c.tiff", IMAGE, compression="zlib", tile=(16, 16))
    if not small:  # pretend the file is huge: read it lazily through tifffile's zarr view
        monkeypatch.setattr(io, "_SMALL_TIFF", 0)
    image = read_image(str(tmp_path / "c.tiff"))
    assert isinstance(image, da.Array) is (not small)
    np.testing.assert_array_equal(np.asarray(image), IMAGE)


def test_3d_tiff(tmp_path):
    volume = np.random.default_rng(0).random((5, 12, 14)).astype(np.float32)
    tifffile.imwrite(tmp_path / "v.tif", volume)
    np.testing.assert_array_equal(read_image(tmp_path / "v.tif"), volume)


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "a.npy", IMAGE)
    image = read_image(tmp_path / "a.npy")
    assert isinstance(image, np.memmap)
    np.testing.assert_array_equal(image, IMAGE)


def test_zarr_array_keeps_its_chunks(tmp_path):
    z = zarr.create_array(tmp_path / "a.zarr", shape=IMAGE.shape, chunks=(8, 16), dtype=IMAGE.dtype)
    z[...] = IMAGE
    image = read_image(tmp_path / "a.zarr")
    assert isinstance(image, da.Array) and image.chunksize == (8, 16)
    np.testing.assert_array_equal(image.compute(), IMAGE)


def test_zarr_group_with_one_array_or_named_array(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("raw", shape=IMAGE.shape, dtype=IMAGE.dtype)[...] = IMAGE
    np.testing.assert_array_equal(read_image(tmp_path / "g.zarr").compute(), IMAGE)
    group.create_array("other", shape=(2, 2), dtype="i4")
    with pytest.raises(ShiftSegError, match="several arrays.*g.zarr/other"):
        read_image(tmp_path / "g.zarr")
    np.testing.assert_array_equal(read_image(tmp_path / "g.zarr" / "raw").compute(), IMAGE)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_reads_the_highest_resolution(tmp_path, version):
    group = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    level = group.create_array("s0", shape=(1, 1, *IMAGE.shape), dtype=IMAGE.dtype, chunks=(1, 1, 8, 8))
    level[...] = IMAGE[None, None]
    group.create_array("s1", shape=(1, 1, 12, 15), dtype=IMAGE.dtype)[...] = IMAGE[None, None, ::2, ::2]
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [  # deliberately listed low resolution first: the scales decide
        {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2, 2]}]},
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1]}]},
    ]
    multiscales = [{"version": version, "axes": axes, "datasets": datasets}]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}
    image = read_image(tmp_path / "ome.zarr")
    assert image.shape == IMAGE.shape
    np.testing.assert_array_equal(image.compute(), IMAGE)


def test_write_zarr_round_trip(tmp_path):
    out = write_zarr(da.from_array(IMAGE, chunks=(10, 10)), tmp_path / "w.zarr", "image")
    assert out.chunks == (10, 10)
    np.testing.assert_array_equal(read_image(tmp_path / "w.zarr").compute(), IMAGE)
    with pytest.raises(ShiftSegError, match="already holds"):
        write_zarr(IMAGE, tmp_path / "w.zarr", "image")
    write_zarr(IMAGE + 1, tmp_path / "w.zarr", "image", overwrite=True)
    np.testing.assert_array_equal(read_image(tmp_path / "w.zarr/image").compute(), IMAGE + 1)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "setup", "message"),
    [
        ("missing.tif", None, "does not exist"),
        ("missing.zarr", None, "does not exist"),
        ("image.png", b"\x89PNG....", "unknown file type '.png'"),
        ("noext", b"data", "unknown file type"),
        ("bad.tif", b"not a tiff at all", "not a readable TIFF"),
        ("bad.npy", b"\x93NUMPY garbage", "not a readable .npy"),
        ("empty.zarr", "dir", "not a readable zarr"),
        ("empty_group.zarr", "group", "contains no array"),
    ],
)
def test_errors_are_clear(tmp_path, name, setup, message):
    path = tmp_path / name
    if isinstance(setup, bytes):
        _write(path, setup)
    elif setup == "dir":
        path.mkdir()
    elif setup == "group":
        zarr.open_group(path, mode="w")
    with pytest.raises(ShiftSegError, match=message) as info:
        read_image(path)
    assert name.split(".")[0] in str(info.value) and "\n" not in str(info.value)


def test_broken_ome_metadata(tmp_path):
    group = zarr.open_group(tmp_path / "b.zarr", mode="w")
    group.attrs["multiscales"] = [{"datasets": [{"path": "nope"}]}]
    with pytest.raises(ShiftSegError, match="OME-Zarr"):
        read_image(tmp_path / "b.zarr")


def test_imagej_voxel_size_and_axes(tmp_path):
    volume = np.zeros((5, 24, 30), np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", volume, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    info = io.image_info(tmp_path / "v.tif")
    assert info["axes"] == "ZYX" and info["voxel_size"] == pytest.approx((2.0, 0.25, 0.25))
    assert info["unit"] == "um"
    tifffile.imwrite(tmp_path / "plain.tif", IMAGE)
    assert io.image_info(tmp_path / "plain.tif")["voxel_size"] is None


def test_ome_zarr_voxel_size(tmp_path):
    root = zarr.open_group(tmp_path / "o.zarr", mode="w")
    root.create_array("0", shape=(1, 4, 24, 30), dtype="uint16")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 3.0, 0.5, 0.5]}]}]}]
    info = io.image_info(tmp_path / "o.zarr")
    assert info["axes"] == "CZYX" and info["voxel_size"] == (3.0, 0.5, 0.5)
    assert info["unit"] == "micrometer"


def test_rgb_and_multichannel_files_need_a_channel(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (24, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(ShiftSegError, match=r"rgb.tif is an RGB image \(axes YXS.*--channel 0..2"):
        io.read_spatial(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(io.read_spatial(tmp_path / "rgb.tif", 1), rgb[..., 1])
    stack = np.zeros((2, 24, 30), np.uint16)
    stack[1] = IMAGE
    tifffile.imwrite(tmp_path / "c.tif", stack, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(ShiftSegError, match=r"is a 2-channel image \(axes CYX"):
        io.read_spatial(tmp_path / "c.tif")
    np.testing.assert_array_equal(io.read_spatial(tmp_path / "c.tif", 1), IMAGE)
    with pytest.raises(ShiftSegError, match="--channel 5 does not exist: c.tif has channels 0..1"):
        io.read_spatial(tmp_path / "c.tif", 5)
    tifffile.imwrite(tmp_path / "g.tif", IMAGE)
    with pytest.raises(ShiftSegError, match="has one channel"):
        io.read_spatial(tmp_path / "g.tif", 0)
    movie = np.zeros((3, 24, 30), np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", movie, imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(ShiftSegError, match="is a time series"):
        io.read_spatial(tmp_path / "t.tif")
