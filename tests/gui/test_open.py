"""Every widget opens through the plugin manager; every sample opens with its ground truth."""

import dask.array as da
import dask.callbacks
import numpy as np
import pytest

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




@pytest.fixture
def segmented(tiny_model_2d, lattice_crop, tmp_path):
    """A `shiftseg segment` output of a 64 x 64 uint8 tif with a voxel size of 0.25 um:
    (its path, the input image)."""
    import tifffile

    from napari_shiftseg.inference.segment import segment_to_zarr

    image = (lattice_crop[0] * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", image, imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "um"})
    out = tmp_path / "cells.zarr"
    segment_to_zarr(tmp_path / "cells.tif", out, tiny_model_2d, tile=16, device="cpu",
                    fg_threshold=0.45, min_size=3)
    return out, image


@pytest.mark.filterwarnings("default::UserWarning")  # as in a napari session, not as errors
def test_segment_output_opens_as_layers(viewer, segmented, tmp_path):
    """Dropping a `shiftseg segment` output on napari: the input image, embeddings, foreground
    and instances, with the input's voxel size. The image is the output's own copy (issue 26),
    so it is shown even after its file has moved, and nothing needs saying."""
    from napari.utils.notifications import notification_manager

    out, image = segmented
    (tmp_path / "cells.tif").rename(tmp_path / "moved.tif")
    seen = len(notification_manager.records)
    with notification_manager:
        layers = viewer.open(str(out), plugin=PLUGIN)
    assert len(notification_manager.records) == seen
    names = [layer.name for layer in layers]
    assert names == ["cells.tif", "embeddings [cells]", "foreground [cells]", "instances [cells]"]
    for layer in layers:
        np.testing.assert_allclose(layer.scale, (0.25, 0.25))
    labels = viewer.layers["instances [cells]"]
    assert labels.data.shape == image.shape and int(np.asarray(labels.data).max()) > 0
    np.testing.assert_array_equal(np.asarray(viewer.layers["cells.tif"].data), image)


def test_viewer_open_without_plugin_shows_the_input(viewer, segmented):
    """issue 26: `viewer.open('OUT.zarr')` failed ("No arrays found in zarr group"). napari
    (0.5 and later) reads with its built-in reader unless `plugin=` names another; that reader
    opens the first subgroup of a zarr folder in sorted order, which was the arrayless
    `labels`. The input now sits in `image/` (the NGFF image), which sorts first: the plain
    call shows the input. All the layers need the plugin named; leaving the choice to napari
    (`plugin=None`, as a drop on the viewer does) names both readers that accept folders."""
    from napari.errors import MultipleReaderError
    from napari.layers import Image

    out, image = segmented
    layers = viewer.open(str(out))
    assert len(layers) == 1 and isinstance(layers[0], Image)
    data = layers[0].data[0] if layers[0].multiscale else layers[0].data
    np.testing.assert_array_equal(np.asarray(data), image)
    with pytest.raises(MultipleReaderError, match=f"'{PLUGIN}'.*plugin=") as err:
        viewer.open(str(out), plugin=None)
    assert {PLUGIN, "napari"} <= set(err.value.available_plugins)


def test_paper_demo_samples_choose_the_disk_model(viewer, wait_idle):
    """issue 26: the lattice samples are the paper's demos, for the disk model (no position
    channels): the Segment widget chooses it for them, says why, and goes back to the default
    for other images. A model file the user chose stays chosen."""
    from napari_shiftseg._widgets._model_choice import BUNDLED

    disks = BUNDLED["disks 2D (paper demos)"]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")   # opened first
    assert widget.model.choice.value == BUNDLED["nuclei 2D (default)"]
    image, _ = viewer.open_sample(PLUGIN, "lattice16")
    assert widget.image.value.name == image.name
    assert widget.model.choice.value == disks
    assert "'disks 2D (paper demos)' chosen for lattice spacing 16" in widget.status.value
    assert "one embedding cluster" in widget.status.value
    assert widget.bandwidth.value == widget.model.settings().bandwidth  # the disk model's settings

    viewer.add_image(np.zeros((32, 32), np.float32), name="cells")
    widget.image.value = viewer.layers["cells"]
    assert widget.model.choice.value == BUNDLED["nuclei 2D (default)"]   # back to the default

    first, _ = viewer.open_sample(PLUGIN, "lattice15")                    # widget opened after
    _, other = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect")
    other.image.value = viewer.layers[first.name]
    assert other.model.choice.value == disks
    widget.image.value = viewer.layers[first.name]
    assert widget.model.choice.value == disks and "separable" in widget.status.value
    wait_idle(widget)


def test_paper_demo_sample_keeps_a_model_file_the_user_chose(viewer, tiny_model_2d, wait_idle):
    viewer.add_image(np.zeros((32, 32), np.float32), name="cells")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.set_model_file(tiny_model_2d)
    image, _ = viewer.open_sample(PLUGIN, "lattice16")
    widget.image.value = image
    assert widget.model.path == tiny_model_2d.resolve()
    assert "choose the model 'disks 2D (paper demos)' to see it" in widget.status.value
    wait_idle(widget)


@pytest.mark.filterwarnings("default::UserWarning")  # as in a napari session, not as errors
def test_moved_input_image_is_reported_every_time(viewer, tmp_path):
    """issue 26: an output written before outputs stored their input names it by its path;
    when that file has moved, the output opens without it, and napari says so, naming the
    path, each time it is opened (napari's hooks in place, as in a napari session, where a
    Python warning's text is shown once a session)."""
    from helpers import older_output
    from napari.utils.notifications import NotificationSeverity, notification_manager

    out = older_output(tmp_path)
    (tmp_path / "cells.tif").rename(tmp_path / "moved.tif")
    for _ in range(2):
        seen = len(notification_manager.records)
        with notification_manager:
            layers = viewer.open(str(out), plugin=PLUGIN)
        assert [layer.name for layer in layers] == ["embeddings [cells]", "foreground [cells]",
                                                    "instances [cells]"]
        told = [r for r in notification_manager.records[seen:] if str(tmp_path / "cells.tif") in str(r.message)]
        assert len(told) == 1 and told[0].severity == NotificationSeverity.WARNING  # each time
        assert "not there any more" in str(told[0].message)
        viewer.layers.clear()
    assert "the results are shown without it (open the image from where it is now" in str(told[0].message)
