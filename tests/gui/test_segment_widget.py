"""Segment widget end to end on a 64 x 64 crop of the spacing-15 sample with a tiny model."""

import re
import time

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QTimer

from napari_shiftseg._widgets._layers import layer_name
from napari_shiftseg.inference.predict import predict_whole
from napari_shiftseg.network.modelio import load_model, save_model

PLUGIN = "napari-shiftseg"
KINDS = ("embeddings", "foreground", "instances", "tile_boundaries", "seams", "grid", "phase")
SCALE, TRANSLATE = (2.0, 0.5), (10.0, -5.0)


@pytest.fixture
def segment(viewer, tiny_model_2d, lattice_crop, wait_for):
    image, _ = lattice_crop
    viewer.add_image(image, name="crop", scale=SCALE, translate=TRANSLATE)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    # The warm-up runs the default model once in the background; spies must not see it.
    wait_for(lambda: not widget.warming_up, what="the warm-up")
    assert widget.set_model_file(tiny_model_2d)
    widget.tile.value = 16
    widget.device.value = "cpu"
    return widget


def _run(widget, wait_idle, mode="exact", tile=16):
    widget.mode.value, widget.tile.value = mode, tile
    widget.run_button.clicked.emit()
    assert widget.busy and widget.run_button.text == "Cancel"
    wait_idle(widget)
    assert widget.run_button.text == "Run" and widget.status.value.startswith("done"), widget.status.value
    assert widget.progress.value == widget.progress.max  # a finished run shows a full bar
    # How many embedding clusters the objects came from (one cluster, many objects = inseparable).
    if "results in" not in widget.status.value:  # in-memory runs count their objects
        assert re.search(r"\d+ objects \(\d+ embedding cluster", widget.status.value), widget.status.value


def test_live_geometry(segment):
    assert "f^l=8" in segment.model.summary.value and "capacity f^(d·l)=64" in segment.model.summary.value
    assert "context=88" in segment.model.summary.value
    segment.tile.value = 21
    assert segment.tile_info.value.startswith("24 = 3·f^l → input 116")  # 24 + 4 + 88


def test_run_layers_and_seams(segment, viewer, wait_idle, tiny_model_2d):
    _run(segment, wait_idle)
    layers = {kind: viewer.layers[layer_name("crop", kind)] for kind in KINDS}
    for kind, layer in layers.items():
        assert tuple(layer.scale) == SCALE and tuple(layer.translate) == TRANSLATE, kind
        shape = layer.data.shape[:-1] if kind == "embeddings" else layer.data.shape
        assert shape == (64, 64), kind
    assert layers["embeddings"].rgb and layers["embeddings"].data.dtype == np.float32
    assert isinstance(layers["instances"], Labels) and layers["instances"].data.dtype == np.int32
    assert isinstance(layers["seams"], Image) and layers["seams"].data.dtype == np.float32
    assert layers["phase"].data.max() == 63          # f^(d·l) - 1 phases in a 64² crop
    n_layers = len(viewer.layers)
    whole = predict_whole(viewer.layers["crop"].data, load_model(tiny_model_2d), device="cpu")
    exact_jump = np.abs(segment._result.embeddings - whole).max()
    exact_seam = float(np.asarray(layers["seams"].data).max())

    _run(segment, wait_idle, mode="naive", tile=20)   # not a multiple of f^l = 8
    assert len(viewer.layers) == n_layers              # reruns update the same layers
    naive_jump = np.abs(segment._result.embeddings - whole).max()
    naive_seam = float(np.asarray(viewer.layers[layer_name("crop", "seams")].data).max())
    assert exact_jump < 1e-4 and naive_jump > 0.1, (exact_jump, naive_jump)
    # the seam layer itself shows it: ~0 for exact tiles, order 1 for naive ones
    assert exact_seam < 1e-4 and naive_seam > 0.1, (exact_seam, naive_seam)
    assert not np.array_equal(viewer.layers[layer_name("crop", "tile_boundaries")].data, layers["grid"].data)

    # Re-cluster: only mean-shift again, on the cached embeddings.
    before = segment._result.embeddings
    segment.bandwidth.value = 0.5
    segment.recluster_button.clicked.emit()
    wait_idle(segment)
    assert segment._result.embeddings is before
    assert segment.status.value.startswith("re-clustered")


def test_cancel_leaves_nothing(segment, viewer, qtbot, wait_idle):
    n_layers = len(viewer.layers)
    segment.tile.value = 8          # 64 tiles: plenty of time to cancel after the first
    segment.progress.changed.connect(lambda v: v > 0 and segment.cancel())
    segment.run_button.clicked.emit()
    wait_idle(segment)
    assert segment.status.value == "cancelled" and segment.run_button.text == "Run"
    assert len(viewer.layers) == n_layers
    assert not segment.busy and segment.preview_button.enabled


def test_event_loop_keeps_running(segment, wait_idle):
    """While the job computes, a 10 ms QTimer keeps firing (the GUI thread never blocks).

    The gaps are measured in the GUI thread's own CPU time, not wall time: on a loaded machine
    the thread may wait long for a core, but work done on it between two ticks (the job, were
    it run there) shows up whatever the load."""
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: segment._task.busy and ticks.append(time.thread_time()))
    timer.start(10)
    segment.tile.value = 8
    segment.run_button.clicked.emit()
    wait_idle(segment)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 10 and gaps.max() < 0.25, (len(ticks), gaps.max())


def test_bad_model_file(segment, viewer, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a model at all")
    before = segment.model.path
    assert not segment.set_model_file(bad)
    assert "shiftseg" in str(notification_manager.records[-1].message)
    assert segment.model.path == before and not segment.busy
    # The reader hands .safetensors files to the Segment widget: a bad one adds no layer either.
    n_layers = len(viewer.layers)
    viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == n_layers
    viewer.add_image(np.zeros((8, 8)), name="still usable")
    assert "still usable" in viewer.layers


def test_over_budget_goes_through_zarr(segment, viewer, wait_idle, monkeypatch):
    """Results larger than the memory budget are written to zarr and shown lazily."""
    import dask.array as da
    import zarr

    from napari_shiftseg._widgets import _common
    from napari_shiftseg._widgets import segment as segment_module

    monkeypatch.setattr(segment_module, "inference_settings",
                        lambda: _common.InferenceSettings(memory_budget_gb=1e-6))
    segment.fg_threshold.value, segment.min_size.value = 0.45, 3
    _run(segment, wait_idle)
    assert "results in" in segment.status.value
    stored = zarr.open_group(str(segment._result.path), mode="r").attrs["shiftseg"]["cluster_args"]
    assert {k: stored[k] for k in ("bandwidth", "fg_threshold", "min_size")} == {
        "bandwidth": segment.bandwidth.value, "fg_threshold": 0.45, "min_size": 3}
    layers = {kind: viewer.layers[layer_name("crop", kind)] for kind in KINDS}
    assert all(isinstance(layer.data, da.Array) for layer in layers.values())
    assert layers["instances"].data.dtype == np.int32 and layers["embeddings"].data.shape == (64, 64, 3)
    assert tuple(layers["seams"].scale) == SCALE
    segment.recluster_button.clicked.emit()
    wait_idle(segment)
    assert segment.status.value == "re-clustered" and isinstance(layers["instances"].data, da.Array)


RECORDED = {"bandwidth": 1.7, "min_size": 33, "fg_threshold": 0.4, "merge_distance": 0.9,
            "absorb_small": False, "fill_holes": True}


def _save_with_settings(source, path, **settings):
    from napari_shiftseg.network.modelio import save_model

    model = load_model(source)
    return save_model(model.net, path, meta={**model.meta, **settings})


def _controls(widget):
    return {name: getattr(widget, name).value for name in RECORDED}


def test_settings_follow_the_model(segment, tiny_model_2d, tmp_path):
    """The controls show what SegmentationSettings.of reads from the chosen model file."""
    from napari_shiftseg.network.modelio import load_bundled
    from napari_shiftseg.network.settings import SegmentationSettings

    tuned = _save_with_settings(tiny_model_2d, tmp_path / "tuned.safetensors", **RECORDED)
    assert segment.set_model_file(tuned)
    assert _controls(segment) == RECORDED
    assert segment.settings() == SegmentationSettings.of(load_model(tuned))
    # Another model in the combo box: its settings (here the bundled one's, fallbacks included).
    segment.model.choice.value = "bundled:2"
    assert segment.settings() == SegmentationSettings.of(load_bundled(2))
    segment.model.choice.value = str(tuned.resolve())
    assert _controls(segment) == RECORDED
    # The same file written again (trained again under its name): the new settings, at once.
    segment.bandwidth.value = 5.0
    _save_with_settings(tiny_model_2d, tuned, **{**RECORDED, "bandwidth": 2.5, "min_size": 4})
    assert segment.set_model_file(tuned)
    assert (segment.bandwidth.value, segment.min_size.value) == (2.5, 4)


def test_run_uses_the_settings_shown(segment, tiny_model_2d, tmp_path, wait_idle, monkeypatch):
    """Run and Re-cluster pass the controls (model settings as edited) into segmentation."""
    import inspect

    from napari_shiftseg.inference import instances

    seen = []

    def spy(function):
        def wrapper(*args, **kwargs):
            bound = inspect.signature(function).bind(*args, **kwargs)
            seen.append({k: v for k, v in bound.arguments.items() if k in RECORDED})
            return function(*args, **kwargs)
        return wrapper

    for name in ("cluster_embeddings", "label_instances"):
        monkeypatch.setattr(instances, name, spy(getattr(instances, name)))
    tuned = _save_with_settings(tiny_model_2d, tmp_path / "tuned.safetensors", **RECORDED)
    assert segment.set_model_file(tuned)
    _run(segment, wait_idle)
    used = {"absorb_small": False}  # post-processing keywords are passed only when on
    used.update({k: v for call in seen for k, v in call.items()})
    assert used == RECORDED, used
    seen.clear()
    segment.fg_threshold.value, segment.fill_holes.value = 0.6, False
    segment.recluster_button.clicked.emit()
    wait_idle(segment)
    used = {k: v for call in seen for k, v in call.items()}
    assert used["fg_threshold"] == 0.6 and not used.get("fill_holes") and used["min_size"] == 33



def test_object_diameter_control_follows_the_model(segment, viewer, tiny_model_2d, tmp_path,
                                                   wait_idle):
    """The bundled nuclei model learnt ~20 px nuclei: the diameter control is on ('auto' by
    default) and a number typed there resamples the image; a model without a recorded size
    turns it off."""
    assert segment.set_model_file(tiny_model_2d)
    assert not segment.diameter.enabled and "segmented as imaged" in segment.diameter.tooltip
    segment.model.choice.value = "bundled:2"
    assert segment.diameter.enabled and "20 px" in segment.diameter.tooltip
    assert segment.diameter.native.text() == "auto" and segment._params().diameter == "auto"
    sized = load_model(tiny_model_2d)
    sized.meta["object_diameter"] = 16.0
    path = save_model(sized, tmp_path / "sized.safetensors")
    assert segment.set_model_file(path)
    segment.diameter.value = 8.0
    _run(segment, wait_idle)
    image = segment.image.value.data
    assert segment._result.resampled.factor == 2.0
    assert segment._result.labels.shape == image.shape
    assert "resampled x2.00" in segment.status.value
    emb = viewer.layers[layer_name(segment.image.value.name, "embeddings")]
    assert tuple(emb.scale) == tuple(s / 2 for s in SCALE)  # the image's scale, halved
    np.testing.assert_allclose(emb.translate, [t - s / 4 for t, s in zip(TRANSLATE, SCALE)])


def test_over_budget_resampled_run(segment, viewer, tiny_model_2d, tmp_path, wait_idle, monkeypatch):
    """A resampled run kept on disk: embeddings on the resampled grid (placed over the image),
    instances on the image's grid."""
    import dask.array as da

    from napari_shiftseg._widgets import _common
    from napari_shiftseg._widgets import segment as segment_module

    monkeypatch.setattr(segment_module, "inference_settings",
                        lambda: _common.InferenceSettings(memory_budget_gb=1e-6))
    sized = load_model(tiny_model_2d)
    sized.meta["object_diameter"] = 16.0
    assert segment.set_model_file(save_model(sized, tmp_path / "sized.safetensors"))
    segment.diameter.value = 8.0
    _run(segment, wait_idle)
    assert "results in" in segment.status.value
    image = segment.image.value.data
    emb = viewer.layers[layer_name("crop", "embeddings")]
    labels = viewer.layers[layer_name("crop", "instances")]
    assert isinstance(labels.data, da.Array) and labels.data.shape == image.shape
    assert emb.data.shape[:2] == tuple(2 * n for n in image.shape)
    assert tuple(emb.scale) == tuple(s / 2 for s in SCALE)
    assert tuple(labels.scale) == SCALE


def test_instances_carry_a_features_table(segment, viewer, wait_idle):
    """Run and Re-cluster put one row per object on the instances layer (napari shows it on
    hover): label id, size in world units (the layer's scale), centroid, intensities."""
    segment.fg_threshold.value, segment.min_size.value = 0.45, 3  # objects from the tiny model
    _run(segment, wait_idle)
    layer = viewer.layers[layer_name("crop", "instances")]
    features = layer.features
    labels = np.asarray(layer.data)
    ids = np.unique(labels[labels > 0])
    assert list(features["index"]) == list(ids)
    first = int(ids[0])
    voxels = int((labels == first).sum())
    assert features["voxels"].iloc[0] == voxels
    assert features["size"].iloc[0] == pytest.approx(voxels * SCALE[0] * SCALE[1])
    image = segment.image.value.data
    assert features["mean_intensity"].iloc[0] == pytest.approx(image[labels == first].mean(), rel=1e-5)
    segment.bandwidth.value = segment.bandwidth.value / 2
    segment.recluster_button.clicked.emit()
    wait_idle(segment)
    labels = np.asarray(layer.data)
    assert list(layer.features["index"]) == list(np.unique(labels[labels > 0]))


def test_split_and_merge(segment, viewer, wait_idle):
    """Merge two objects by id, then split the merged object again from its embeddings: the two
    end up apart; the features table follows each edit."""
    assert not segment.split_button.enabled                        # nothing to proofread yet
    segment.fg_threshold.value, segment.min_size.value = 0.45, 3
    _run(segment, wait_idle)
    assert segment.split_button.enabled and segment.merge_button.enabled
    layer = viewer.layers[layer_name("crop", "instances")]
    before = np.asarray(layer.data).copy()
    ids = np.unique(before[before > 0])
    assert len(ids) >= 3
    sizes = {i: int((before == i).sum()) for i in ids}
    a, b = sorted(ids, key=lambda i: -sizes[i])[:2]                 # the two largest objects
    segment.merge_ids.value = f"{b}, {a}"
    segment.merge_button.clicked.emit()
    merged = np.asarray(layer.data)
    kept = min(a, b)
    assert set(np.unique(merged[(before == a) | (before == b)])) == {kept}
    assert f"into {kept}" in segment.status.value
    assert max(a, b) not in set(layer.features["index"])
    layer.selected_label = kept
    segment.split_button.clicked.emit()
    split = np.asarray(layer.data)
    assert segment.status.value.startswith(f"split object {kept} into")
    assert set(np.unique(split[before == a])).isdisjoint(np.unique(split[before == b]))
    assert list(layer.features["index"]) == list(np.unique(split[split > 0]))
    segment.merge_ids.value = "4, x"
    segment.merge_button.clicked.emit()                             # an error, nothing changed
    np.testing.assert_array_equal(np.asarray(layer.data), split)


def test_undo_split_and_merge(segment, viewer, wait_idle):
    """issue 26: Undo takes back splits and merges, last first, exactly; napari's own undo of
    the layer (Ctrl+Z) takes them back too; a new run starts a new history."""
    segment.fg_threshold.value, segment.min_size.value = 0.45, 3
    _run(segment, wait_idle)
    assert not segment.undo_button.enabled                          # nothing to undo yet
    layer = viewer.layers[layer_name("crop", "instances")]
    before = np.asarray(layer.data).copy()
    ids = np.unique(before[before > 0])
    sizes = {i: int((before == i).sum()) for i in ids}
    a, b = sorted(ids, key=lambda i: -sizes[i])[:2]
    segment.merge_ids.value = f"{a}, {b}"
    segment.merge_button.clicked.emit()
    merged = np.asarray(layer.data).copy()
    assert segment.undo_button.enabled and not np.array_equal(merged, before)
    layer.selected_label = min(a, b)
    segment.split_button.clicked.emit()
    assert segment.status.value.startswith("split object")
    split = np.asarray(layer.data).copy()

    segment.undo_button.clicked.emit()
    np.testing.assert_array_equal(np.asarray(layer.data), merged)
    assert list(layer.features["index"]) == list(np.unique(merged[merged > 0]))  # the table follows
    np.testing.assert_array_equal(segment._result.labels, merged)
    segment.undo_button.clicked.emit()
    np.testing.assert_array_equal(np.asarray(layer.data), before)
    assert not segment.undo_button.enabled and segment.status.value == "undone"

    segment.merge_button.clicked.emit()                             # the same merge again...
    np.testing.assert_array_equal(np.asarray(layer.data), merged)
    layer.undo()                                                    # ...taken back by napari
    np.testing.assert_array_equal(np.asarray(layer.data), before)

    segment.merge_button.clicked.emit()
    _run(segment, wait_idle)                                        # new labels: a new history
    assert not segment.undo_button.enabled
    assert not np.array_equal(split, before)


def test_2d_model_on_a_stack(viewer, tiny_model_2d, lattice_crop, wait_idle):
    """A 2D model on a 3D layer runs slice by slice (exact in the plane, equal to the whole
    stack run slice by slice); objects are linked across z; a preview is the current slice."""
    image = np.stack([lattice_crop[0]] * 3).astype(np.float32)
    viewer.add_image(image, name="stack")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.set_model_file(tiny_model_2d)
    widget.image.value = viewer.layers["stack"]
    widget.tile.value, widget.device.value = 16, "cpu"
    widget.fg_threshold.value, widget.min_size.value = 0.45, 3
    _run(widget, wait_idle)
    full = predict_whole(image, load_model(tiny_model_2d), device="cpu", per_slice=True)
    np.testing.assert_allclose(widget._result.embeddings, full, atol=1e-5)
    labels = np.asarray(viewer.layers[layer_name("stack", "instances")].data)
    assert labels.shape == image.shape
    ids = np.unique(labels[labels > 0])
    assert len(ids) > 0 and all((labels == i).any(axis=(1, 2)).all() for i in ids)  # linked in z
    assert viewer.layers[layer_name("stack", "phase")].data.shape == image.shape
    viewer.dims.set_point(0, 1)
    widget.preview()
    wait_idle(widget)
    preview = viewer.layers[layer_name("stack", "instances")]
    assert preview.data.shape[0] == 1 and tuple(preview.translate)[0] == 1.0
    np.testing.assert_allclose(widget._result.embeddings[:, 0],
                               full[(slice(None), 1) + tuple(slice(int(t), int(t) + n) for t, n in
                                                             zip(preview.translate[1:], preview.data.shape[1:]))],
                               atol=1e-4)


def test_anisotropic_model(viewer, tmp_path, wait_idle):
    """A network that pools z less than y, x: the widget shows the per-axis grid, snaps the
    tile per axis, and the run equals whole-image inference (exact)."""
    import torch

    from napari_shiftseg.network.geometry import UNetGeometry
    from napari_shiftseg.network.modelio import Model
    from napari_shiftseg.network.unet import UNet, UNetConfig

    torch.manual_seed(0)
    geometry = UNetGeometry(ndim=3, levels=2, factors=((1, 2, 2), (2, 2, 2)))
    path = save_model(Model(UNet(UNetConfig(geometry=geometry, base_channels=2)), {}),
                      tmp_path / "aniso.safetensors")
    image = np.random.default_rng(0).random((6, 20, 20)).astype(np.float32)
    viewer.add_image(image, name="stack", scale=(3.0, 1.0, 1.0))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.set_model_file(path)
    assert "F=(2, 4, 4)" in widget.model.summary.value
    widget.image.value = viewer.layers["stack"]
    widget.device.value = "cpu"
    widget.tile.value = 9
    assert widget.tile_info.value.startswith("(10, 8, 8) on the grid (2, 4, 4)")
    _run(widget, wait_idle, tile=9)
    full = predict_whole(image, load_model(path), device="cpu")
    np.testing.assert_allclose(widget._result.embeddings, full, atol=1e-5)
    assert viewer.layers[layer_name("stack", "phase")].data.max() == 2 * 4 * 4 - 1
