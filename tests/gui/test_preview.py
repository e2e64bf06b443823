"""Preview computes only the visible region / current slice, and equals the full run there."""

import numpy as np

from napari_shiftseg.modelio import load_model
from napari_shiftseg.predict import predict_whole
from napari_shiftseg.synth import random_objects
from napari_shiftseg._widgets._layers import layer_name


def test_preview_2d_matches_full_run_and_screenshot(make_napari_viewer, qtbot, tiny_model_2d,
                                                    lattice_crop, wait_idle):
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
    qtbot.wait(100)                                                    # let the canvas draw
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

    from napari_shiftseg.geometry import UNetGeometry
    from napari_shiftseg.modelio import save_model
    from napari_shiftseg.unet import UNet, UNetConfig

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
    import threading

    from napari_shiftseg._widgets import _pipeline
    from napari_shiftseg.settings import SegmentationSettings

    noise = np.random.default_rng(0).normal(0, 0.3, (256, 256))
    image = (np.tile(lattice_crop[0], (4, 4)) + noise).astype(np.float32)  # percentiles differ
    path = _spatial_model(tmp_path / "spatial.safetensors",
                          {"method": "percentile", "low": 20.0, "high": 80.0})
    model = load_model(path)
    full = predict_whole(image, model, device="cpu")        # the recorded normalisation
    params = _pipeline.SegmentParams(settings=SegmentationSettings.of(model), tile=16, device="cpu")
    region = (slice(160, 192), slice(120, 160))   # whole f^l = 4 cells, context and all off the origin
    result = _pipeline.segment(lambda *_: None, threading.Event(), image, path, params,
                               _pipeline.ModelCache(), region)
    np.testing.assert_allclose(result.embeddings, full[(slice(None),) + region], rtol=1e-5, atol=1e-4)
