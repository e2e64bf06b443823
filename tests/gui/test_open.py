"""Every widget opens through the plugin manager; every sample opens with its ground truth."""

import dask.array as da
import dask.callbacks
import numpy as np

from napari_shiftseg._widgets._common import inference_settings
from napari_shiftseg._widgets.inspect import InspectWidget
from napari_shiftseg._widgets.segment import SegmentWidget
from napari_shiftseg._widgets.train import TrainWidget

PLUGIN = "napari-shiftseg"


def test_widgets_open(viewer):
    for name, cls in (("Segment", SegmentWidget), ("Train", TrainWidget), ("Inspect", InspectWidget)):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert isinstance(widget, cls)
        assert not widget.busy
    # The defaults come from the plugin's `configurations` (napari Preferences).
    settings = inference_settings()
    assert (settings.device, settings.memory_budget_gb, settings.tile_size) == ("auto", 4.0, 128)
    assert widget.tile.value == 128 and widget.device.value == "auto"


def test_samples(viewer):
    for key, shape in (("lattice15", (220, 220)), ("lattice16", (220, 220)), ("spheres3d", (48, 128, 128))):
        image, labels = viewer.open_sample(PLUGIN, key)
        assert image.data.shape == labels.data.shape == shape
        assert image.data.dtype == np.float32 and labels.data.dtype == np.int32
        assert labels.data.max() > 10 and labels.name == f"{image.name} ground truth"


class _CountVoxels(dask.callbacks.Callback):
    """Adds up the elements of every array a dask task returns while active (napari computes
    slices with dask)."""

    def __init__(self):
        super().__init__()
        self.voxels = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.voxels += int(getattr(result, "size", 0))


def test_large_sample_stays_lazy_and_slider_moves_compute_one_plane(viewer):
    image, labels = viewer.open_sample(PLUGIN, "large3d")
    assert isinstance(image.data, da.Array) and isinstance(labels.data, da.Array)
    assert image.data.nbytes >= 1e9
    # It opens on a slice with objects (the old sample opened on an empty chunk border).
    z = viewer.dims.current_step[0]
    assert np.unique(labels.data[z].compute()).size > 100
    # A slider move generates the new plane only (its blocks, their slices, the joined plane:
    # at most 3 planes' worth of elements), for the shown image only (the ground truth is
    # hidden). The old sample generated 16 blocks of 32 x 256 x 256: 32 planes' worth.
    plane = 1024 * 1024
    for new_z in (3, 200, 511):
        with _CountVoxels() as count:
            viewer.dims.set_current_step(0, new_z)
        assert plane <= count.voxels <= 3 * plane, count.voxels / plane


def test_reader_opens_model_in_segment_widget(viewer, tiny_model_2d):
    n_layers = len(viewer.layers)
    viewer.open(str(tiny_model_2d), plugin=PLUGIN)
    assert len(viewer.layers) == n_layers                       # a model is not a layer
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")  # the docked one
    assert widget.model.path == tiny_model_2d.resolve() and "l=3" in widget.model.summary.value




def test_segment_output_opens_as_layers(viewer, tiny_model_2d, lattice_crop, tmp_path):
    """Dropping a `shiftseg segment` output on napari: the input image, embeddings, foreground
    and instances, with the input's voxel size."""
    import tifffile

    from napari_shiftseg.segment import segment_to_zarr

    image = (lattice_crop[0] * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", image, imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "um"})
    out = tmp_path / "cells.zarr"
    segment_to_zarr(tmp_path / "cells.tif", out, tiny_model_2d, tile=16, device="cpu",
                    fg_threshold=0.45, min_size=3)
    layers = viewer.open(str(out), plugin=PLUGIN)
    names = [layer.name for layer in layers]
    assert names == ["cells.tif", "embeddings [cells]", "foreground [cells]", "instances [cells]"]
    for layer in layers:
        np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    labels = viewer.layers["instances [cells]"]
    assert labels.data.shape == image.shape and int(np.asarray(labels.data).max()) > 0
    np.testing.assert_array_equal(np.asarray(viewer.layers["cells.tif"].data), image)
