"""``shiftseg segment`` outputs are OME-Zarr images (NGFF 0.5 by default, 0.4 on request) with a
label image: validated with ome-zarr-models, scales from the input's voxel size. The image is the
input that was segmented (issue 26: it was the embeddings), so generic NGFF viewers show the
data under the labels."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_shiftseg.cli import main
from napari_shiftseg.files.ngff import IMAGE, LABELS
from napari_shiftseg.inference.segment import segment_to_zarr
from napari_shiftseg.synthetic import synth
from napari_shiftseg.util._errors import ShiftSegError


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A small 3D tif with an ImageJ voxel size of 2 x 0.5 x 0.5 µm."""
    image, _ = synth.nuclei((8, 24, 24), seed=1)
    path = tmp_path_factory.mktemp("ngff") / "stack.tif"
    tifffile.imwrite(path, image.astype(np.float32), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    return path


@pytest.fixture(scope="module")
def tiny_model_3d_path(tmp_path_factory, stack):
    from helpers import save_standardized

    image = tifffile.imread(stack)
    return save_standardized(tmp_path_factory.mktemp("m") / "m3.safetensors", image, ndim=3)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_output_validates_as_ome_zarr(stack, tiny_model_3d_path, tmp_path, version):
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
        from ome_zarr_models.v05.image_label import ImageLabel
    else:
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel
    out = tmp_path / "out.zarr"
    segment_to_zarr(stack, out, tiny_model_3d_path, tile=8, device="cpu", ngff=version, diameter=None,
                    min_size=0, isotropic=False)  # the network on the stack's own voxels
    group = zarr.open_group(out, mode="r")
    assert group.metadata.zarr_format == (3 if version == "0.5" else 2)
    image = Image.from_zarr(group)  # raises on any violation of the spec
    labels = ImageLabel.from_zarr(group["labels/instances"])
    image_ms = image.ome_attributes.multiscales[0] if version == "0.5" else image.attributes.multiscales[0]
    label_ms = labels.ome_attributes.multiscales[0] if version == "0.5" else labels.attributes.multiscales[0]
    # The image is the input, as it was read, on the labels' grid and with their voxel size.
    assert image_ms.datasets[0].path == IMAGE == "image/0"
    assert [a.name for a in image_ms.axes] == [a.name for a in label_ms.axes] == ["z", "y", "x"]
    assert [a.unit for a in image_ms.axes] == [a.unit for a in label_ms.axes] == ["micrometer"] * 3
    assert list(label_ms.datasets[0].coordinateTransformations[0].scale) == [2.0, 0.5, 0.5]
    assert list(image_ms.datasets[0].coordinateTransformations[0].scale) == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(group[IMAGE][...], tifffile.imread(stack))
    assert group[IMAGE].dtype == np.float32 and group[IMAGE].chunks == group[LABELS].chunks
    assert group[LABELS].shape == (8, 24, 24) and group[LABELS][...].max() > 0
    # The embeddings stay, as a plain array that NGFF readers skip.
    assert group["embeddings"].shape[1:] == (8, 24, 24)
    assert group.attrs["shiftseg"]["input_stored"] is True


def test_resampled_run_keeps_the_input_grid_for_image_and_labels(stack, tiny_model_3d_path, tmp_path):
    """The network ran on cubic voxels (z step 2 µm resampled to 0.5 µm: four planes per
    plane); the NGFF image and labels stay on the stack's grid and voxel size."""
    from ome_zarr_models.v05.image import Image

    out = tmp_path / "iso.zarr"
    group = segment_to_zarr(stack, out, tiny_model_3d_path, tile=8, device="cpu", isotropic=True, diameter=None)
    assert group["embeddings"].shape[1:] == (32, 24, 24)
    assert group[IMAGE].shape == group[LABELS].shape == (8, 24, 24)
    np.testing.assert_array_equal(group[IMAGE][...], tifffile.imread(stack))
    multiscale = Image.from_zarr(group).ome_attributes.multiscales[0]
    assert list(multiscale.datasets[0].coordinateTransformations[0].scale) == [2.0, 0.5, 0.5]


def test_ngff_version_is_checked_and_kept_on_resume(stack, tiny_model_3d_path, tmp_path, capsys):
    with pytest.raises(ShiftSegError, match="0.5, 0.4"):
        segment_to_zarr(stack, tmp_path / "x.zarr", tiny_model_3d_path, tile=8, ngff="0.3")
    out = tmp_path / "o.zarr"
    args = ["segment", str(stack), "-m", str(tiny_model_3d_path), "--tile", "8", "-o", str(out),
            "--device", "cpu", "--quiet", "--diameter", "none"]
    assert main(args) == 0
    assert main(args + ["--ngff", "0.4"]) == 2
    assert "OME-Zarr version (was 0.5, now 0.4)" in capsys.readouterr().err
    assert main(args + ["--ngff", "0.4", "--overwrite"]) == 0
    assert zarr.open_group(out, mode="r").metadata.zarr_format == 2


def test_image_source_is_read_chunk_by_chunk_in_native_byte_order(tmp_path):
    """The copy of the input (segment_to_zarr and series) goes through ngff.image_source: one
    task per chunk of the target, a big-endian file (tifffile memory-maps them as they are) in
    zarr's native order."""
    from napari_shiftseg.files.ngff import image_source

    data = np.arange(40 * 56, dtype=">u2").reshape(40, 56)
    mapped = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=">u2", shape=data.shape)
    mapped[...] = data
    source = image_source(mapped, (16, 16))
    assert source.chunks == ((16, 16, 8), (16, 16, 16, 8)) and source.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(source.compute(), data)
