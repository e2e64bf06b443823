"""Inspect widget: f^l grid and phase map layers, seams, and the stitched-vs-whole check."""

import re

import numpy as np
import pytest

from napari_shiftseg._widgets._layers import layer_name


@pytest.fixture
def inspect(viewer, tiny_model_2d, lattice_crop):
    viewer.add_image(lattice_crop[0], name="crop", scale=(2.0, 2.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Inspect")
    assert widget.set_model_file(tiny_model_2d)
    widget.device.value = "cpu"
    return widget


def _check(widget, wait_idle, mode, tile) -> float:
    widget.mode.value, widget.tile.value = mode, tile
    widget.check_button.clicked.emit()
    wait_idle(widget)
    return float(re.search(r"= ([-+0-9.e]+)", widget.result.value).group(1))


def test_inspect(inspect, viewer, wait_idle):
    inspect.grid_button.clicked.emit()
    inspect.phase_button.clicked.emit()
    grid, phase = viewer.layers[layer_name("crop", "grid")], viewer.layers[layer_name("crop", "phase")]
    assert grid.data.shape == phase.data.shape == (64, 64) and tuple(grid.scale) == (2.0, 2.0)
    assert np.asarray(grid.data)[::8, 0].all() and not np.asarray(grid.data)[1:8, 1:8].any()
    assert int(np.asarray(phase.data).max()) == 63

    assert _check(inspect, wait_idle, "exact", 16) < 1e-5
    assert "on the f^l grid (8 x 8)" in inspect.result.value
    assert _check(inspect, wait_idle, "naive", 20) > 0.1
    # The check says why: naive tiles of 20 start 4 px off the grid of 8.
    assert "every 20 x 20 px, 4 x 4 px off the f^l grid (8 x 8): not exact" in inspect.result.value
    _check(inspect, wait_idle, "blend", 20)
    assert "every 15 x 15 px, 7 x 7 px off" in inspect.result.value  # blend: stride = 3/4 tile

    inspect.seams_button.clicked.emit()
    wait_idle(inspect)
    assert viewer.layers[layer_name("crop", "seams")].data.shape == (64, 64)
    assert np.asarray(viewer.layers[layer_name("crop", "tile_boundaries")].data).any()


def test_inspect_picks_the_model_of_the_image_dimensionality(viewer):
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="vol")
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Inspect")
    widget.image.value = viewer.layers["vol"]
    assert widget.model.geometry.ndim == 3
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    widget.image.value = viewer.layers["img"]
    assert widget.model.geometry.ndim == 2


def test_phase_map_after_a_segment_run_is_shown(viewer, tiny_model_2d, lattice_crop, wait_idle):
    """issue 26: a Segment run leaves a hidden phase layer of the same name; Inspect ▸ Phase map
    shows it (visible and selected) holding the image's phase map, placed on the image."""
    from napari_shiftseg.inference import diagnostics

    viewer.add_image(lattice_crop[0], name="crop", scale=(2.0, 2.0))
    _, segment = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    assert segment.set_model_file(tiny_model_2d)
    segment.tile.value, segment.device.value = 16, "cpu"
    segment.run()
    wait_idle(segment)
    assert segment.status.value.startswith("done"), segment.status.value
    name = layer_name("crop", "phase")
    assert not viewer.layers[name].visible                      # diagnostics start hidden
    viewer.layers[name].data = np.zeros((64, 64), np.int32)     # whatever it held before
    _, inspect = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Inspect")
    assert inspect.set_model_file(tiny_model_2d)
    inspect.phase_button.clicked.emit()
    phase = viewer.layers[name]
    assert phase.visible and viewer.layers.selection.active.name == name
    geometry = inspect.model.geometry
    np.testing.assert_array_equal(np.asarray(phase.data), np.asarray(diagnostics.phase_map((64, 64), geometry)))
    assert tuple(phase.scale) == (2.0, 2.0) and tuple(phase.contrast_limits) == (0, 63)
    phase.visible = False                                        # a second click shows it again
    inspect.phase_button.clicked.emit()
    assert viewer.layers[name].visible
