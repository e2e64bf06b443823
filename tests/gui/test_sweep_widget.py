"""Sweep dock widget: runs the tile-size sweep on the current layers, plots it, cancels."""

import csv

import pytest


@pytest.fixture
def sweep(viewer, tiny_model_2d, lattice_crop):
    from napari_shiftseg._widgets.sweep import SweepWidget

    image, labels = lattice_crop
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    widget = SweepWidget(viewer)
    # the manifest entry may not exist yet: dock the widget directly
    viewer.window.add_dock_widget(widget, name="Sweep")
    assert widget.set_model_file(tiny_model_2d)
    widget.image.value = viewer.layers["img"]
    widget.truth.value = viewer.layers["gt"]
    widget.device.value = "cpu"
    return widget


def test_sweep_widget_runs_and_plots(sweep, wait_idle, tmp_path):
    sweep.tiles.value = "16:24:4"
    sweep.mode.value = "exact"
    sweep.folder.value = tmp_path
    sweep.run_button.clicked.emit()
    assert sweep.busy and sweep.run_button.text == "Cancel"
    wait_idle(sweep)
    assert sweep.run_button.text == "Run sweep"
    rows = sweep.last_result["rows"]
    assert [r["tile"] for r in rows] == [16, 20, 24]
    assert all(r["rel_diff"] <= 1e-5 for r in rows)
    ax = sweep.figure.axes[0]
    assert ax.get_xlabel() == "output tile size" and len(ax.lines) >= 2
    assert "best tile" in sweep.result.value
    assert sweep.progress.value == sweep.progress.max
    with (tmp_path / "sweep.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "sweep.png").is_file()


def test_sweep_widget_cancel_and_bad_input(sweep, wait_idle):
    sweep.tiles.value = "not tiles"
    sweep.run_button.clicked.emit()
    assert not sweep.busy and "tiles must look like" in sweep.result.value

    sweep.tiles.value = "9:40"
    sweep.mode.value = "naive"
    sweep.run_button.clicked.emit()
    assert sweep.busy
    sweep.run_button.clicked.emit()  # the button is Cancel now
    wait_idle(sweep)
    assert sweep.result.value == "cancelled" and sweep.last_result is None
