"""Train widget: geometry feedback, a few real training steps, hand-over to Segment."""

from pathlib import Path

from napari_shiftseg._widgets.train import BUNDLED, FROM_SEGMENT, LAYERS, NEW
from napari_shiftseg.network.modelio import read_metadata


def _small(widget, tmp_path, source="synthetic: lattice spacing 15"):
    widget.source.value = source
    widget.start_from.value = NEW    # layers start from the bundled model otherwise
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
    _small(widget, tmp_path, LAYERS)
    assert widget.image.value.name == "img" and widget.labels_layer.value.name == "gt"
    widget.train_button.clicked.emit()
    assert widget.busy and widget.train_button.text == "Cancel"
    wait_idle(widget)
    path = Path(widget.saved_path)
    assert path.is_file() and read_metadata(path).meta["steps"] == 4
    assert widget.train_button.text == "Train" and widget.use_button.enabled
    assert len(widget.axes.lines) == 1 and len(widget.axes.lines[0].get_xdata()) == 4
    widget.use_button.clicked.emit()
    _, segment = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    assert segment.model.path == path.resolve()
    assert "l=2" in segment.model.summary.value


def test_train_cancel_saves_nothing(viewer, wait_for, wait_idle, tmp_path):
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path)
    widget.steps.value = 10_000
    widget.start()
    wait_for(lambda: widget.progress.value > 0, what="the first training step")
    widget.train_button.clicked.emit()  # now a Cancel button
    wait_idle(widget)
    assert widget.status.value == "cancelled"
    assert not (tmp_path / "trained.safetensors").exists()


def _cli_defaults(ndim, *extra):
    """``shiftseg train``'s options for data of ``ndim`` when no others than ``extra`` are given."""
    import argparse

    from napari_shiftseg.cli.train import _fill_defaults, add_parser
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    cli = sub.choices["train"].parse_args(["--image", "i.tif", "--labels", "l.tif", "-o", "m.safetensors",
                                           *extra])
    _fill_defaults(cli, ndim)
    return cli


def test_defaults_as_the_cli(viewer):
    import numpy as np

    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    assert widget.validation.value == 25 and widget.tune.value and widget.augment.value
    # Steps, batch size, rate and the start are the CLI's defaults (one owner for both): on
    # annotated layers, continue the bundled model; on synthetic data, a new network.
    cli = _cli_defaults(2)
    assert widget.start_from.value == BUNDLED and cli.init == "bundled" and not widget.levels.enabled
    assert (widget.steps.value, widget.batch_size.value, widget.lr.value) == (cli.steps, cli.batch_size, cli.lr)
    assert (cli.steps, cli.batch_size, cli.lr) == (1000, 4, 3e-4)
    new = _cli_defaults(2, "--init", "none")
    widget.start_from.value = NEW
    assert (widget.steps.value, widget.batch_size.value, widget.lr.value) == (new.steps, new.batch_size, new.lr)
    assert (new.steps, new.lr) == (3000, 1e-3) and widget.levels.enabled
    widget.source.value = "synthetic: lattice spacing 15"
    widget.source.value = LAYERS                                          # back: the bundled model
    assert widget.start_from.value == BUNDLED and widget.steps.value == 1000
    # A 3D image: the 3D batch and, for a new network, two pooling levels.
    viewer.add_image(np.zeros((8, 16, 16), np.float32), name="volume")
    widget.image.value = viewer.layers["volume"]
    cli3 = _cli_defaults(3)
    assert widget.ndim.value == 3 and widget.batch_size.value == cli3.batch_size == 2
    assert widget.bundled_model().geometry.ndim == 3 and widget.ndim.enabled
    widget.start_from.value = NEW
    assert widget.levels.value == 2 and widget.steps.value == _cli_defaults(3, "--init", "none").steps
    widget.source.value = "synthetic: lattice spacing 15"
    assert widget.start_from.value == NEW
    widget.ndim.value = 2
    assert (widget.levels.value, widget.batch_size.value) == (3, 4)
    assert widget.training_window() is None and "sized to the objects" in widget.geometry_info.value
    config = widget.config()
    assert (config.embedding, config.embed_dim, config.position_scale) == ("spatial", 3, 0.25)
    widget.embedding.value = "free"
    assert not widget.position_scale.visible
    assert (widget.config().embedding, widget.config().embed_dim) == ("free", 3)
    widget.validation.value = 0
    assert not widget.tune.enabled                     # nothing held out: nothing to tune on
    widget.window.value = 40                           # a window typed in is the one used
    assert not widget.auto_window.value and widget.training_window() == 40
    assert "window 40 → input" in widget.geometry_info.value


def test_validation_score_and_tuned_settings_reach_segment(viewer, wait_idle, tmp_path, lattice_crop):
    """A tiny run with 25 % held out: the held-out AP@0.5 and the tuned settings are shown,
    and "Use in Segment" puts the tuned settings into the Segment widget's controls."""
    from types import SimpleNamespace

    import numpy as np

    from napari_shiftseg.network.settings import SegmentationSettings

    image, labels = lattice_crop                      # 128 x 64 below: room for a held-out band
    image = np.concatenate([image, image])
    labels = np.concatenate([labels, np.where(labels > 0, labels + labels.max(), 0)])
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    _, segment = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    segment.bandwidth.value, segment.min_size.value = 9.5, 999    # edited, for another model
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path, LAYERS)
    widget.auto_window.value = True                    # the default: sized to the objects
    widget.train_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value.startswith("saved"), widget.status.value
    meta = read_metadata(widget.saved_path).meta
    record = meta["validation"]
    assert "best_step" in record and "tuned" in record, record
    tuned = SegmentationSettings.of(SimpleNamespace(meta=meta, name="trained"))
    shown = widget.held_out.value
    assert f"AP@0.5 {record['tuned']['ap@0.5']:.3f}" in shown and "tuned" in shown
    assert f"bandwidth {tuned.bandwidth:g}" in shown and f"min size {tuned.min_size}" in shown
    widget.use_button.clicked.emit()
    assert segment.model.path == Path(widget.saved_path).resolve()
    assert segment.settings() == tuned


def test_synthetic_training_validates_on_fresh_images(viewer, wait_idle, tmp_path):
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path)
    widget.tune.value = False
    widget.train_button.clicked.emit()
    wait_idle(widget)
    record = read_metadata(widget.saved_path).meta["validation"]
    assert record["held_out"] == "2 given validation image(s)" and "tuned" not in record
    assert widget.held_out.value.startswith(f"AP@0.5 {record['ap@0.5']:.3f}")


def test_sparse_labels_with_a_drawn_region(viewer, wait_idle, tmp_path, lattice_crop):
    """A third of the objects painted, the complete part drawn as a rectangle (Shapes)."""
    import numpy as np

    image, labels = lattice_crop
    ids = np.unique(labels[labels > 0])
    viewer.add_image(image, name="img")
    viewer.add_labels(np.where(np.isin(labels, ids[: len(ids) // 3]), labels, 0), name="some")
    h, w = labels.shape
    viewer.add_shapes([np.array([[0, 0], [h // 2, 0], [h // 2, w], [0, w]])], shape_type="rectangle",
                      name="done here")
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path, LAYERS)
    widget.labels_layer.value = viewer.layers["some"]
    widget.reset_choices()
    names = [c if isinstance(c, str) else c for c in widget.annotated.choices]
    assert len(names) == 3                          # complete, painted, the shapes layer
    widget.annotated.value = viewer.layers["done here"]
    region = widget.annotated_region(labels.shape)
    assert region[: h // 2 - 1].all() and not region[h // 2 + 1:].any()
    widget.train_button.clicked.emit()
    wait_idle(widget)
    meta = read_metadata(Path(widget.saved_path)).meta
    assert "sparse labels" in meta["training_data"] and "annotated-region mask" in meta["training_data"]


def test_fine_tune_the_segment_model_on_corrected_labels(viewer, wait_idle, tmp_path, lattice_crop,
                                                        tiny_model_2d):
    """The human-in-the-loop round: Segment with a model, correct the instances layer (here
    with a merge), fine-tune that model on it from the Train widget, and Segment runs with the
    new file (same network, more steps, provenance recorded)."""
    import numpy as np

    from napari_shiftseg.network.modelio import load_model

    image, _ = lattice_crop
    viewer.add_image(image, name="img")
    _, segment = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    assert segment.set_model_file(tiny_model_2d)
    segment.tile.value, segment.device.value = 16, "cpu"
    segment.fg_threshold.value, segment.min_size.value = 0.45, 3
    segment.run()
    wait_idle(segment)
    corrected = viewer.layers["instances [img]"]
    ids = np.unique(np.asarray(corrected.data))[1:3]
    segment.merge_ids.value = ", ".join(map(str, ids))
    segment.merge()                                                   # a proofreading edit
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Train")
    _small(widget, tmp_path, LAYERS)
    widget.labels_layer.value = corrected
    widget.start_from.value = FROM_SEGMENT
    assert not widget.levels.enabled                                  # the model's own network
    assert widget.steps.value == 1000                                 # a continued model's steps
    widget.steps.value = 4
    widget.train_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value.startswith("saved"), widget.status.value
    tuned = load_model(widget.saved_path)
    assert tuned.config == load_model(tiny_model_2d).config
    assert tuned.meta["initialised_from"]["model"] == Path(tiny_model_2d).name
    widget.use_button.clicked.emit()
    assert segment.model.path == Path(widget.saved_path).resolve()
    segment.run()
    wait_idle(segment)
    assert segment.status.value.startswith("done"), segment.status.value
