"""Train widget: geometry feedback, a few real training steps, hand-over to Segment."""

from pathlib import Path

from napari_shiftseg.modelio import read_metadata


def _small(widget, tmp_path):
    widget.source.value = "synthetic: lattice spacing 15"
    widget.levels.value = 2          # f^l = 4
    widget.channels.value = 2
    widget.window.value = 12
    widget.steps.value = 4
    widget.save_path.value = tmp_path / "trained.safetensors"


def test_window_warning(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    widget.levels.value = 3
    widget.window.value = 8          # = f^l: seams
    assert "seams" in widget.warning.value and not widget.train_button.enabled
    assert "input" in widget.geometry_info.value
    widget.allow_small.value = True
    assert widget.train_button.enabled
    widget.window.value = 24
    assert widget.warning.value == "" and widget.train_button.enabled


def test_train_save_and_use(viewer, wait_idle, tmp_path, lattice_crop):
    image, labels = lattice_crop
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path)
    widget.source.value = "image + labels layers"
    assert widget.image.value.name == "img" and widget.labels_layer.value.name == "gt"
    widget.train_button.clicked.emit()
    assert widget.busy and widget.train_button.text == "Cancel"
    wait_idle(widget)
    path = Path(widget.saved_path)
    assert path.is_file() and read_metadata(path)["meta"]["steps"] == 4
    assert widget.train_button.text == "Train" and widget.use_button.enabled
    assert len(widget.axes.lines) == 1 and len(widget.axes.lines[0].get_xdata()) == 4
    widget.use_button.clicked.emit()
    _, segment = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    assert segment.model.path == path.resolve()
    assert "l=2" in segment.model.summary.value


def test_train_cancel_saves_nothing(viewer, qtbot, wait_idle, tmp_path):
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path)
    widget.steps.value = 10_000
    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=60_000)
    widget.train_button.clicked.emit()  # now a Cancel button
    wait_idle(widget)
    assert widget.status.value == "cancelled"
    assert not (tmp_path / "trained.safetensors").exists()
