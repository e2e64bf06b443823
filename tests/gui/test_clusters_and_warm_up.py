"""Segment widget: the clusters layer shows the paper's point on the inseparable sample, and the
widget pays a first run's one-time costs when it opens (issue 12, items 6 and 13)."""

import numpy as np
from napari.layers import Labels

from napari_shiftseg._widgets._layers import layer_name
from napari_shiftseg.network.modelio import bundled_model_path

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
    wait_idle(widget)
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


def test_widget_warms_up_when_it_opens(viewer, wait_for):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    # The warm-up starts when the widget opens, in a background thread; the Run button stays
    # usable meanwhile.
    assert widget.run_button.enabled
    wait_for(lambda: not widget.warming_up, what="the warm-up")
    assert widget.warmed_up and widget.run_button.enabled and not widget.busy
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


def test_full_garbage_collections_wait_for_idle_moments(viewer, qtbot, wait_for, monkeypatch):
    """With a Segment widget open, Python never starts a full collection itself (it stalled
    slider moves for ~0.3 s): the plugin runs it after a layer removal and when the viewer is
    idle; Python's thresholds come back when the widget goes; the setting turns it off."""
    import gc

    import numpy as np

    from napari_shiftseg._widgets import _common, _gc, segment

    assert _common.inference_settings().idle_gc is True  # on by default
    before = gc.get_threshold()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    collector = _gc._state["collector"]
    assert collector is not None and gc.get_threshold()[2] == _gc.NEVER
    assert gc.get_threshold()[:2] == before[:2]  # the cheap young collections are untouched

    # A removed layer is collected at once (its data may sit in reference cycles).
    done = collector.collections
    viewer.add_image(np.zeros((32, 32), np.float32), name="gone")
    viewer.layers.remove("gone")
    wait_for(lambda: collector.collections > done, what="a full collection")
    # A burst of removals (closing a viewer removes every layer) gets one collection, not one
    # per layer (8 full collections made every GUI test's teardown cost ~6 s).
    for i in range(5):
        viewer.add_image(np.zeros((8, 8), np.float32), name=f"burst{i}")
    done = collector.collections
    viewer.layers.clear()
    wait_for(lambda: collector.collections > done, what="a full collection")
    from qtpy.QtCore import QCoreApplication

    for _ in range(5):  # run whatever further collection was queued (zero-time timers)
        QCoreApplication.processEvents()
    assert collector.collections == done + 1

    # Idle and due (10 middle-generation collections since the last full one): collected.
    collector.idle_s = 0.1
    done = collector.collections
    for _ in range(_gc.DUE_AFTER):
        gc.collect(1)
    assert collector.due()
    wait_for(lambda: collector.collections > done, what="a full collection")
    assert not collector.due()
    # Busy (activity just now, long idle time asked): nothing runs although it is due.
    collector.idle_s = 3600
    for _ in range(_gc.DUE_AFTER):
        gc.collect(1)
    viewer.dims.events.current_step(value=(0, 0))
    done = collector.collections
    qtbot.wait(1200)
    assert collector.collections == done

    _gc.release()  # the widget going away releases it (its Qt object's destroyed signal)
    assert _gc._state["collector"] is None and gc.get_threshold() == before

    monkeypatch.setattr(segment, "inference_settings", lambda: _common.InferenceSettings(idle_gc=False))
    segment.SegmentWidget(viewer)
    assert _gc._state["collector"] is None and gc.get_threshold() == before
    del widget
