"""Preview computes only the visible region / current slice, and equals the full run there."""

import numpy as np

from napari_shiftseg._widgets._layers import layer_name
from napari_shiftseg.inference.predict import predict_whole
from napari_shiftseg.network.modelio import load_model
from napari_shiftseg.synthetic.synth import random_objects


def test_preview_2d_matches_full_run_and_screenshot(make_napari_viewer, qtbot, tiny_model_2d,
                                                    lattice_crop, wait_idle, wait_for):
    # Shown: napari computes the visible region (layer.corner_pixels) only when it draws.
    viewer = make_napari_viewer(show=True)
    image = np.tile(lattice_crop[0], (2, 2))                            # 128 x 128
    viewer.add_image(image, name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    widget.set_model_file(tiny_model_2d)
    widget.tile.value, widget.device.value = 16, "cpu"
    full = predict_whole(image, load_model(tiny_model_2d), device="cpu")  # = an exact full run
    viewer.scene.camera.center = (80, 90)
    viewer.scene.camera.zoom = 4 * viewer.scene.camera.zoom
    # napari updates the visible region (layer.corner_pixels) when the canvas draws: wait for
    # that draw rather than a fixed time, which a loaded machine may not give it.
    source = viewer.layers["img"]
    wait_for(lambda: bool((np.diff(source.corner_pixels, axis=0) < 127).any()),
             what="the zoomed canvas to draw")
    widget.preview_button.clicked.emit()
    wait_idle(widget)
    layer = viewer.layers[layer_name("img", "instances")]
    origin = tuple(int(t) for t in layer.translate)
    shape = layer.data.shape
    assert all(o % 8 == 0 for o in origin)                             # on the f^l grid
    assert shape[0] < 128 or shape[1] < 128                            # only the visible part
    assert origin[0] <= 80 < origin[0] + shape[0] and origin[1] <= 90 < origin[1] + shape[1]
    region = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(origin, shape))
    np.testing.assert_allclose(widget._result.embeddings, full[region], atol=1e-5)

    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 1                  # the canvas is not blank


def test_preview_3d_current_slice(viewer, tiny_model_3d, wait_idle):
    image, _ = random_objects((24, 40, 40), radius=4, seed=1)
    viewer.add_image(image, name="vol", scale=(2.0, 1.0, 1.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    widget.set_model_file(tiny_model_3d)
    widget.tile.value, widget.device.value = 16, "cpu"
    viewer.dims.set_point(0, 2.0 * 10)                                 # world z 20 = slice 10
    widget.preview()
    wait_idle(widget)
    layer = viewer.layers[layer_name("vol", "instances")]
    assert layer.data.shape == (4, 40, 40)                             # the f^l = 4 cell of slice 10
    assert tuple(layer.translate) == (16.0, 0.0, 0.0) and tuple(layer.scale) == (2.0, 1.0, 1.0)


def _spatial_model(path, normalization):
    """Random spatial-embedding 2D model (l = 2) recording a non-default normalisation."""
    import torch

    from napari_shiftseg.network.geometry import UNetGeometry
    from napari_shiftseg.network.modelio import save_model
    from napari_shiftseg.network.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2, embed_dim=2,
                        embedding="spatial", position_scale=0.25)
    net = UNet(config).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return save_model(net, path, meta={"normalization": normalization})


def test_preview_uses_the_models_normalisation_and_global_positions(tmp_path, lattice_crop):
    """The preview job predicts a crop: it must still normalise as the model was trained
    (recorded percentiles of the whole image) and give spatial embeddings image positions."""

    from napari_shiftseg.inference.session import Session
    from napari_shiftseg.network.settings import SegmentationSettings

    noise = np.random.default_rng(0).normal(0, 0.3, (256, 256))
    image = (np.tile(lattice_crop[0], (4, 4)) + noise).astype(np.float32)  # percentiles differ
    path = _spatial_model(tmp_path / "spatial.safetensors",
                          {"method": "percentile", "low": 20.0, "high": 80.0})
    model = load_model(path)
    full = predict_whole(image, model, device="cpu")        # the recorded normalisation
    region = (slice(160, 192), slice(120, 160))   # whole f^l = 4 cells, context and all off the origin
    result = Session(image, model, settings=SegmentationSettings.of(model), tile=16, device="cpu").preview(region)
    np.testing.assert_allclose(result.embeddings, full[(slice(None),) + region], rtol=1e-5, atol=1e-4)


def test_resampled_run_and_preview(tmp_path, lattice_crop):
    """A model that learnt 20 px objects, told the image's are 10 px: the network runs on the
    image upsampled 2x (a preview equals the full resampled run there), the labels come back
    on the image's grid and the embedding layers are placed over the image's pixels."""
    import threading

    from napari_shiftseg._widgets import _layers
    from napari_shiftseg.imaging import rescale
    from napari_shiftseg.inference.session import Session
    from napari_shiftseg.network.settings import SegmentationSettings

    image = np.tile(lattice_crop[0], (2, 2)).astype(np.float32)             # 128 x 128
    path = _spatial_model(tmp_path / "spatial.safetensors", {"method": "percentile", "low": 1.0,
                                                             "high": 99.8})
    model = load_model(path)
    model.meta["object_diameter"] = 20.0
    from napari_shiftseg.network.modelio import save_model
    save_model(model, path)
    session = Session(image, load_model(path), settings=SegmentationSettings.of(model), tile=16, device="cpu",
                      diameter=10.0)
    full = session.run()
    assert full.resampled.factor == 2.0 and full.resampled.working_shape == (256, 256)
    assert full.embeddings.shape[1:] == (256, 256) and full.labels.shape == image.shape
    working = rescale.resize_image(image, shape=(256, 256))
    np.testing.assert_allclose(full.embeddings, predict_whole(working, model, device="cpu"),
                               rtol=1e-5, atol=1e-4)
    # Labels on the image's grid are the working labels read at each pixel's nearest centre.
    labels = session._label(lambda *_: None, threading.Event(), full.embeddings, session.settings, True, None,
                            False)[0]
    np.testing.assert_array_equal(full.labels, labels[1::2, 1::2])

    region = (slice(40, 72), slice(16, 48))
    preview = session.preview(region)
    assert preview.labels.shape == (32, 32) and preview.origin == (40, 16)
    part = tuple(slice(o, o + n) for o, n in zip(preview.resampled.origin, preview.embeddings.shape[1:]))
    np.testing.assert_allclose(preview.embeddings, full.embeddings[(slice(None),) + part],
                               rtol=1e-5, atol=1e-4)
    # Placement: working pixel j of the preview is centred on image coordinate (o + j + 0.5) / 2 - 0.5.
    where = _layers.placement((1.0, 1.0), (0.0, 0.0), preview.origin)
    layers = _layers.segmentation_layers(preview, "img", where, 2)
    emb = next(kw for _, kw, _ in layers if kw["name"].startswith("embeddings"))
    inst = next(kw for _, kw, _ in layers if kw["name"].startswith("instances"))
    assert emb["scale"] == (0.5, 0.5) and inst["translate"] == (40.0, 16.0)
    np.testing.assert_allclose(emb["translate"], [(o + 0.5) / 2 - 0.5 for o in preview.resampled.origin])
    assert "resampled x2.00" in full.note


def test_spatial_preview_of_a_stack_slice(tmp_path, lattice_crop):
    """A spatial 2D model on a stack: the preview of one slice's region equals the full
    slice-by-slice run there (in-plane positions of the whole image)."""

    from napari_shiftseg.inference.session import Session
    from napari_shiftseg.network.settings import SegmentationSettings

    plane = np.tile(lattice_crop[0], (4, 4)).astype(np.float32)
    stack = np.stack([plane, plane[::-1], plane[:, ::-1]])
    path = _spatial_model(tmp_path / "spatial.safetensors", {"method": "percentile", "low": 1.0,
                                                             "high": 99.8})
    model = load_model(path)
    full = predict_whole(stack, model, device="cpu", per_slice=True)
    region = (slice(2, 3), slice(160, 192), slice(120, 160))
    result = Session(stack, model, settings=SegmentationSettings.of(model), tile=16, device="cpu").preview(region)
    np.testing.assert_allclose(result.embeddings, full[(slice(None),) + region], rtol=1e-5, atol=1e-4)
    assert result.labels.shape == (1, 32, 40)


def test_resampled_3d_layers_keep_the_image_grid_and_the_count(viewer, tiny_model_3d, wait_idle):
    """issue 26: a volume with a z step of 2 runs on cubic voxels (16 planes for its 8). Every
    layer of a Run and of a Preview is on the image's grid, so the z slider counts the image's
    planes; the status line's object count is the number of ids the instances layer holds
    (thin objects of the resampled labels are lost on the way back to the image's grid)."""
    image, _ = random_objects((8, 32, 32), radius=2, seed=1)
    viewer.add_image(image, name="vol", scale=(2.0, 1.0, 1.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-shiftseg", "Segment")
    widget.set_model_file(tiny_model_3d)
    widget.tile.value, widget.device.value = 16, "cpu"
    widget.fg_threshold.value, widget.min_size.value = 0.45, 1   # many small objects
    viewer.dims.set_point(0, 2.0 * 5)                                   # slice 5
    for action, shape in ((widget.run, (8, 32, 32)), (widget.preview, (4, 32, 32))):
        action()
        wait_idle(widget)
        assert widget._result.resampled.working_shape[0] == 2 * widget._result.resampled.image_shape[0]
        assert viewer.dims.nsteps[0] == 8, viewer.dims.range
        instances = viewer.layers[layer_name("vol", "instances")]
        for layer in viewer.layers:
            if layer.name.endswith("[vol]"):
                assert layer.data.shape[:3] == shape, layer.name
                assert tuple(layer.scale)[:3] == (2.0, 1.0, 1.0), layer.name
                assert tuple(layer.translate)[:3] == tuple(instances.translate), layer.name
        labels = np.asarray(instances.data)
        present = np.unique(labels[labels > 0]).size
        assert present > 10 and f": {present} objects" in widget.status.value, widget.status.value
