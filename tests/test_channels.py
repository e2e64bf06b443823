"""Multi-channel networks: per-channel normalisation, exact tiling, training from channel-first
images, and clear errors when the channels do not fit the model."""

import numpy as np
import pytest
import torch

from napari_shiftseg.imaging.normalize import percentile_normalization
from napari_shiftseg.inference.evaluate import segment_array
from napari_shiftseg.inference.predict import predict_embeddings, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import Model, load_model, save_model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.synthetic import synth
from napari_shiftseg.training.train import network_config, train
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)


def two_channels(seed=0, shape=(48, 48)):
    """Nuclei in channel 0 (bright) and a dim, inverted copy in channel 1."""
    image, labels = synth.nuclei(shape, seed=seed)
    return np.stack([image * 1000.0, 5.0 - image]).astype(np.float32), labels


def test_normalisation_is_per_channel():
    image, _ = two_channels()
    norm = percentile_normalization(image, channels_first=True)
    assert len(norm.low) == 2 and norm.high[0] > 100 * norm.high[1]
    out = norm(image)
    for c in range(2):  # each channel spans about [0, 1] on its own
        assert -0.1 < np.percentile(out[c], 1) < 0.1 and 0.9 < np.percentile(out[c], 99.8) < 1.1


@pytest.mark.parametrize("axis", [0, 2])
def test_exact_tiling_with_channels(axis):
    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4, in_channels=2,
                          upsampling="nearest"))
    image = np.moveaxis(two_channels()[0], 0, axis)
    whole = predict_whole(image, net, device="cpu", channel_axis=axis)
    assert whole.std(axis=(1, 2)).max() > 1e-4  # the random net responds to its input
    tiled = predict_embeddings(image, net, tile=8, device="cpu", channel_axis=axis).compute(scheduler="sync")
    assert tiled.shape == whole.shape == (net.config.out_channels, 48, 48)
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max()
    # the second channel is not ignored
    flat = image.copy()
    np.moveaxis(flat, axis, 0)[1] = np.random.default_rng(1).random((48, 48))
    assert np.abs(predict_whole(flat, net, device="cpu", channel_axis=axis) - whole).max() > 1e-5


def test_train_and_segment_two_channels(tmp_path):
    config = network_config(2, levels=2, base_channels=4, in_channels=2)
    pairs = [two_channels(s) for s in range(2)]
    model, history = train(pairs, None, config, steps=3, output_window=12, batch_size=2,
                           validation_pairs=[two_channels(9)])
    assert len(history["loss"]) == 3 and np.isfinite(history["loss"]).all()
    path = save_model(model, tmp_path / "two.safetensors")
    back = load_model(path)
    assert back.config.in_channels == 2
    labels = segment_array(two_channels(5)[0], back, diameter=None)
    assert labels.shape == (48, 48)


@pytest.mark.parametrize("image_shape, match", [
    ((48, 48), "takes 2 channels"),
    ((3, 48, 48), "takes 2 channels"),
    ((2, 40, 48), "differ"),
])
def test_channel_mismatch_is_named(image_shape, match):
    config = network_config(2, levels=2, base_channels=4, in_channels=2)
    labels = synth.nuclei((48, 48), seed=0)[1]
    with pytest.raises(ShiftSegError, match=match):
        train([(np.zeros(image_shape, np.float32) + np.arange(48)[-1], labels)], None, config, steps=1,
              output_window=12)


def test_single_channel_model_refuses_channels():
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2))
    with pytest.raises(ShiftSegError, match="expects 1 channel"):
        predict_whole(np.zeros((2, 48, 48), np.float32), net, device="cpu", channel_axis=0)
    model = Model(net, {})
    with pytest.raises(ShiftSegError, match="2D"):
        segment_array(np.zeros((2, 48, 48), np.float32), model, diameter=None)


# ---- command line -----------------------------------------------------------------------------
def _three_channel_tif(path, seed):
    import tifffile

    image, labels = two_channels(seed)
    stack = np.stack([image[0], np.zeros_like(image[0]), image[1]])  # C, Y, X: channel 1 empty
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX"})
    return labels


def test_cli_train_and_segment_with_channels(tmp_path, capsys):
    import tifffile
    import zarr

    from napari_shiftseg.cli import main

    labels = _three_channel_tif(tmp_path / "img.tif", 0)
    tifffile.imwrite(tmp_path / "lab.tif", labels.astype(np.uint16))
    model = tmp_path / "two.safetensors"
    train_args = ["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                  "--channels", "0,2", "--levels", "2", "--base-channels", "4", "--window", "12",
                  "--steps", "2", "--quiet", "--no-tune", "-o", str(model)]
    assert main(train_args) == 0
    assert load_model(model).config.in_channels == 2
    out = tmp_path / "seg.zarr"
    seg = ["segment", str(tmp_path / "img.tif"), "-m", str(model), "--channels", "0,2", "--tile", "16",
           "-o", str(out), "--device", "cpu", "--quiet", "--table", str(tmp_path / "t.csv")]
    assert main(seg) == 0
    group = zarr.open_group(out, mode="r")
    assert group["labels/instances/0"].shape == (48, 48)
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert "mean_intensity_c0" in header and "mean_intensity_c1" in header
    # the same run, equal to whole-image inference of the two channels
    image = tifffile.imread(tmp_path / "img.tif")[[0, 2]]
    whole = predict_whole(image, load_model(model), device="cpu", channel_axis=0)
    np.testing.assert_allclose(np.asarray(group["embeddings"]), whole, atol=1e-5)
    # its NGFF image is the two channels the model took (issue 26), opened one layer per channel
    from ome_zarr_models.v05.image import Image

    from napari_shiftseg._reader import read_segmentation
    from napari_shiftseg.files.ngff import IMAGE

    np.testing.assert_array_equal(group[IMAGE][...], image)
    assert [a.name for a in Image.from_zarr(group).ome_attributes.multiscales[0].axes] == ["c", "y", "x"]
    data, kwargs, _ = read_segmentation(out)[0]
    assert kwargs["name"] == "img.tif" and kwargs["channel_axis"] == 0 and data.shape == (2, 48, 48)


@pytest.mark.parametrize("extra, match", [
    (["--channel", "0"], "takes 2 input channel(s) but the image gives one"),
    (["--channels", "0,1,2"], "takes 2 input channel(s) but the image gives 3 channels"),
    (["--channels", "0,5"], "has channels 0..2"),
    (["--channels", "0,2", "--diameter", "20"], "as imaged"),
    (["--channels", "0,2", "--channel", "1"], "not both"),
])
def test_cli_channel_errors_are_one_line(tmp_path, capsys, extra, match):
    from napari_shiftseg.cli import main

    _three_channel_tif(tmp_path / "img.tif", 0)
    torch.manual_seed(0)
    model = save_model(Model(UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2,
                                             in_channels=2)), {}), tmp_path / "two.safetensors")
    assert main(["segment", str(tmp_path / "img.tif"), "-m", str(model), "--tile", "16", "-o",
                 str(tmp_path / "o.zarr"), "--device", "cpu", "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "o.zarr").exists()
