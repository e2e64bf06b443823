"""Segment widget: the clusters layer shows the paper's point on the inseparable sample, and the
widget pays a first run's one-time costs when it opens (issue 12, items 6 and 13)."""

import numpy as np
from napari.layers import Labels

from napari_shiftseg._widgets._layers import layer_name
from napari_shiftseg.modelio import bundled_model_path

PLUGIN = "napari-shiftseg"


def test_inseparable_lattice_is_one_embedding_cluster(viewer, wait_idle):
    """Spacing 16 = 2·f^l: every disk sits at the same phase, so the (non-spatial) disk model
    must give all of them one embedding. Connected components still make ~196 instances; the
    clusters layer shows the single cluster they came from."""
    image, _ = viewer.open_sample(PLUGIN, "lattice16")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.image.value = image
    assert widget.set_model_file(bundled_model_path(2, "disks"))
    widget.device.value = "cpu"
    widget.run_button.clicked.emit()
    wait_idle(widget, timeout=120_000)
    assert widget.status.value.startswith("done"), widget.status.value
    instances = viewer.layers[layer_name(image.name, "instances")]
    clusters = viewer.layers[layer_name(image.name, "clusters")]
    assert isinstance(clusters, Labels) and not clusters.visible
    assert clusters.data.shape == instances.data.shape == image.data.shape
    ids = np.unique(instances.data[instances.data > 0])
    # Each instance is a piece of one cluster; count the instances per cluster.
    cluster_of = [np.unique(clusters.data[instances.data == i]) for i in ids]
    assert all(c.size == 1 and c[0] > 0 for c in cluster_of)
    per_cluster = np.bincount([int(c[0]) for c in cluster_of])
    # Disks near the border see the image's reflection and may differ; all the others share
    # one embedding (measured: 196 instances from 5 clusters, most in one).
    assert ids.size > 100 and per_cluster.max() >= 0.75 * ids.size, (ids.size, per_cluster)


def test_recluster_updates_the_clusters_layer(viewer, wait_idle, tiny_model_2d, lattice_crop):
    image, _ = lattice_crop
    viewer.add_image(image, name="crop")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.set_model_file(tiny_model_2d)
    widget.device.value, widget.tile.value = "cpu", 16
    widget.run_button.clicked.emit()
    wait_idle(widget)
    clusters = viewer.layers[layer_name("crop", "clusters")]
    before = clusters.data.copy()
    widget.bandwidth.value = widget.bandwidth.value * 50  # everything within one bandwidth
    widget.recluster_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value.startswith("re-clustered"), widget.status.value
    assert viewer.layers[layer_name("crop", "clusters")] is clusters  # updated in place
    assert np.unique(clusters.data[clusters.data > 0]).size <= 1
    assert not np.array_equal(before, clusters.data) or np.unique(before[before > 0]).size <= 1


def test_widget_warms_up_when_it_opens(viewer, qtbot):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    # The warm-up starts when the widget opens, in a background thread; the Run button stays
    # usable meanwhile.
    assert widget.run_button.enabled
    qtbot.waitUntil(lambda: widget.warmed_up, timeout=60_000)
    assert widget.run_button.enabled and not widget.busy
    # It loaded the chosen model into the run's cache: the first Run does not load it again.
    assert widget._cache.loaded_path() == widget.model.path


def test_auto_tile(viewer, wait_idle, tiny_model_2d, lattice_crop):
    viewer.add_image(lattice_crop[0], name="crop")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.set_model_file(tiny_model_2d)
    widget.device.value, widget.tile.value = "cpu", 0
    assert widget.tile.native.specialValueText() == "auto" and widget.tile_info.value.startswith("auto: the largest")
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value.startswith("done"), widget.status.value
    # One tile covers the 64² crop: the tile boundaries layer marks no inner border.
    borders = viewer.layers[layer_name("crop", "tile_boundaries")].data
    assert not np.asarray(borders)[8:56, 8:56].any()


def test_segment_and_train_docked_together_fit_a_1200_px_screen(viewer):
    """Both widgets scroll rather than force their full height on the window (napari docks
    their ``native``, the scroll area)."""
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    needed = segment.native.minimumSizeHint().height() + train.native.minimumSizeHint().height()
    assert needed < 600, needed
    # The controls are all inside the scroll areas, and the docks hold the scroll areas.
    assert segment.run_button.native.isVisibleTo(segment.inner) and train.canvas.isVisibleTo(train.inner)
    assert segment.native.widget() is segment.inner


def test_freeze_gc_is_opt_in(viewer, monkeypatch):
    import gc

    from napari_shiftseg._widgets import _common, segment

    assert _common.inference_settings().freeze_gc is False  # off by default
    frozen = gc.get_freeze_count()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert gc.get_freeze_count() == frozen
    monkeypatch.setattr(segment, "inference_settings", lambda: _common.InferenceSettings(freeze_gc=True))
    try:
        segment.SegmentWidget(viewer)
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
