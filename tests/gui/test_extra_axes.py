"""Segment widget on layers with one axis more than the model: channels, time, RGB."""

import numpy as np

from napari_shiftseg._widgets import _axes
from napari_shiftseg._widgets._layers import layer_name
from napari_shiftseg.inference.predict import predict_whole
from napari_shiftseg.network.modelio import load_model

PLUGIN = "napari-shiftseg"


def _widget(viewer, model, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.set_model_file(model)
    widget.image.value = viewer.layers[name]
    widget.tile.value, widget.device.value = 16, "cpu"
    widget.fg_threshold.value, widget.min_size.value = 0.45, 3
    return widget


def _run(widget, wait_idle):
    widget.run_button.clicked.emit()
    wait_idle(widget)
    assert widget.status.value.startswith("done"), widget.status.value


def test_two_channel_layer_with_a_channel_chosen(viewer, tiny_model_2d, lattice_crop, wait_idle):
    image = np.stack([np.zeros_like(lattice_crop[0]), lattice_crop[0]]).astype(np.float32)
    viewer.add_image(image, name="two", scale=(1.0, 2.0, 2.0))
    widget = _widget(viewer, tiny_model_2d, "two")
    assert not widget.extra_axis.native.isHidden() and _axes.CHANNEL in widget.extra_axis.choices
    widget.extra_axis.value = _axes.CHANNEL
    assert not widget.extra_index.native.isHidden()
    widget.extra_index.value = 1
    _run(widget, wait_idle)
    expected = predict_whole(image[1], load_model(tiny_model_2d), device="cpu")
    np.testing.assert_allclose(widget._result.embeddings, expected, atol=1e-5)
    labels = viewer.layers[layer_name("two", "instances")]
    assert labels.data.shape == image.shape[1:] and tuple(labels.scale) == (2.0, 2.0)
    widget.extra_index.value = 5
    widget.run_button.clicked.emit()                    # refused: channel 5 does not exist
    assert not widget.busy


def test_time_series_current_point_and_all(viewer, tiny_model_3d, wait_idle):
    from napari_shiftseg.synthetic.synth import random_objects

    volumes = [random_objects((16, 24, 24), radius=4, seed=s)[0] for s in (1, 2, 3)]
    movie = np.stack(volumes).astype(np.float32)        # T x Z x Y x X
    viewer.add_image(movie, name="movie", scale=(5.0, 1.0, 1.0, 1.0))
    widget = _widget(viewer, tiny_model_3d, "movie")
    assert _axes.Z not in widget.extra_axis.choices     # a 3D model: time or channel only
    widget.extra_axis.value = _axes.TIME
    viewer.dims.set_point(0, 5.0 * 2)                   # world t = 10: time point 2
    _run(widget, wait_idle)
    current = viewer.layers[layer_name("movie", "instances")]
    assert current.data.shape == (1, 16, 24, 24) and current.translate[0] == 10.0
    expected = predict_whole(movie[2], load_model(tiny_model_3d), device="cpu")
    emb = viewer.layers[layer_name("movie", "foreground")]
    assert emb.data.shape == (1, 16, 24, 24)
    np.testing.assert_allclose(emb.data[0], 1 / (1 + np.exp(-expected[-1])), atol=1e-5)
    assert not widget.recluster_button.enabled          # single points of a series: re-run instead

    widget.extra_axis.value = _axes.TIME_ALL
    _run(widget, wait_idle)
    every = viewer.layers[layer_name("movie", "instances")]
    assert every.data.shape == movie.shape and tuple(every.scale)[0] == 5.0
    ids = [set(np.unique(every.data[t])) - {0} for t in range(3)]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # numbered on per point
    assert "over 3 time points" in widget.status.value


def test_rgb_layer_and_a_2d_model(viewer, tiny_model_2d, lattice_crop, wait_idle):
    rgb = np.stack([lattice_crop[0]] * 3, axis=-1).astype(np.float32)
    viewer.add_image(rgb, name="colour", rgb=True)
    widget = _widget(viewer, tiny_model_2d, "colour")
    assert list(widget.extra_axis.choices) == [_axes.CHANNEL]
    widget.extra_index.value = 2
    _run(widget, wait_idle)
    assert viewer.layers[layer_name("colour", "instances")].data.shape == rgb.shape[:2]


def test_isotropic_resampling_of_an_anisotropic_layer(viewer, tiny_model_3d, wait_idle):
    from napari_shiftseg.synthetic.synth import random_objects

    volume = random_objects((24, 24, 24), radius=4, seed=4)[0][::3].astype(np.float32)  # 8 planes
    viewer.add_image(volume, name="aniso", scale=(3.0, 1.0, 1.0))
    widget = _widget(viewer, tiny_model_3d, "aniso")
    widget.isotropic.value = True
    _run(widget, wait_idle)
    assert widget._result.embeddings.shape[1:] == (24, 24, 24)       # cubic voxels for the network
    assert "voxels made cubic (3 x 1 x 1 per axis)" in widget.status.value
    labels = viewer.layers[layer_name("aniso", "instances")]
    emb = viewer.layers[layer_name("aniso", "embeddings")]
    assert labels.data.shape == volume.shape and tuple(labels.scale) == (3.0, 1.0, 1.0)
    # Shown on the layer's own grid (issue 26): a finer layer would make the z slider count
    # the network's planes (24) instead of the image's (8).
    assert emb.data.shape[:3] == volume.shape and tuple(emb.scale)[:3] == (3.0, 1.0, 1.0)
    assert viewer.dims.nsteps[0] == 8


def test_isotropic_resampling_of_a_layer_kept_on_disk(viewer, tiny_model_3d, wait_idle, monkeypatch):
    """Results over the memory budget go through zarr: the isotropic choice reaches that run too."""
    from napari_shiftseg._widgets import _common
    from napari_shiftseg._widgets import segment as segment_module
    from napari_shiftseg.synthetic.synth import random_objects

    monkeypatch.setattr(segment_module, "inference_settings",
                        lambda: _common.InferenceSettings(memory_budget_gb=1e-6))
    volume = random_objects((24, 24, 24), radius=4, seed=4)[0][::3].astype(np.float32)
    viewer.add_image(volume, name="aniso", scale=(3.0, 1.0, 1.0))
    widget = _widget(viewer, tiny_model_3d, "aniso")
    widget.isotropic.value = True
    _run(widget, wait_idle)
    assert "results in" in widget.status.value
    assert widget._result.embeddings.shape[1:] == (24, 24, 24)       # cubic voxels for the network
    assert viewer.layers[layer_name("aniso", "embeddings")].data.shape[:3] == volume.shape  # shown on its grid
    assert viewer.layers[layer_name("aniso", "instances")].data.shape == volume.shape


def test_multi_channel_model_takes_the_channels_listed(viewer, lattice_crop, tmp_path, wait_idle):
    """A 2-channel network on a 3-channel layer: the listed channels, in the model's order; a
    preview equals the full run there; the table has one intensity column per channel."""
    import torch

    from napari_shiftseg.network.geometry import UNetGeometry
    from napari_shiftseg.network.modelio import Model, save_model
    from napari_shiftseg.network.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4, in_channels=2))
    model = save_model(Model(net, {"bandwidth": 1.0, "fg_threshold": 0.5, "min_size": 0}),
                       tmp_path / "two.safetensors")
    crop = lattice_crop[0].astype(np.float32)
    image = np.stack([crop, np.zeros_like(crop), 10 * crop[::-1]])
    viewer.add_image(image, name="three", scale=(1.0, 2.0, 2.0))
    widget = _widget(viewer, model, "three")
    assert widget.extra_axis.choices == (_axes.CHANNELS,) or list(widget.extra_axis.choices) == [_axes.CHANNELS]
    assert not widget.channels.native.isHidden() and widget.extra_index.native.isHidden()
    widget.channels.value = "2,0"
    _run(widget, wait_idle)
    expected = predict_whole(image[[2, 0]], load_model(model), device="cpu", channel_axis=0)
    np.testing.assert_allclose(widget._result.embeddings, expected, atol=1e-5)
    labels = viewer.layers[layer_name("three", "instances")]
    assert labels.data.shape == crop.shape and tuple(labels.scale) == (2.0, 2.0)
    assert {"mean_intensity_c0", "mean_intensity_c1"} <= set(labels.features.columns)
    widget.preview()
    wait_idle(widget)
    part = widget._result
    region = tuple(slice(o, o + n) for o, n in zip(part.origin or (0, 0), part.labels.shape))
    np.testing.assert_allclose(part.embeddings, expected[(slice(None),) + region], atol=1e-4)
    widget.channels.value = "0"
    widget.run_button.clicked.emit()
    assert not widget.busy and "takes 2 channels" in widget.status.value + _last_error(viewer)


def _last_error(viewer):
    from napari.utils.notifications import notification_manager

    return " ".join(str(n.message) for n in notification_manager.records[-3:])
