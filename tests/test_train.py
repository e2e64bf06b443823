"""Training loop (napari_shiftseg.training.train): windows, crops, determinism, cancel, checkpoints."""

import dataclasses
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_shiftseg.imaging.normalize import percentile_normalization
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import Model, load_model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.synthetic import synth
from napari_shiftseg.training.augment import NO_AUGMENTATION, Augmentation
from napari_shiftseg.training.train import (
    _batch,
    _Crop,
    _Prepared,
    _unmove,
    default_training_window,
    train,
)
from napari_shiftseg.util._errors import ShiftSegError

# A tiny 2D network (l = 2, f^l = 4, context 40): a step takes milliseconds.
TINY = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4)
WINDOW = 12


@pytest.fixture(scope="module")
def pair():
    return synth.random_objects((48, 48), n_objects=12, radius=4, noise_std=0.05, seed=1)


def _state(model):
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_loss_goes_down(pair):
    _, history = train(*pair, TINY, steps=150, lr=3e-3, output_window=WINDOW, seed=0)
    first, last = np.mean(history["loss"][:20]), np.mean(history["loss"][-20:])
    assert last < 0.7 * first, (first, last)
    assert history["steps_done"] == 150 and not history["cancelled"]
    assert set(history) >= {"loss", "pull", "push", "reg", "foreground", "seconds"}


@pytest.mark.parametrize("window", [4, 3, (12, 4)])
def test_small_windows_are_refused(pair, window):
    with pytest.raises(ShiftSegError, match=r"larger than f\^l = 4.*seams.*allow_small_window"):
        train(*pair, TINY, steps=1, output_window=window)


def test_small_window_allowed_with_flag(pair):
    model, history = train(*pair, TINY, steps=2, output_window=4, allow_small_window=True)
    assert history["steps_done"] == 2
    assert model.meta["training_window"] == [4, 4]


def test_same_padding_has_no_window_rule(pair):
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2, padding="same"), base_channels=4)
    model, _ = train(*pair, config, steps=2, output_window=4)
    assert model.meta["training_window"] == [4, 4]


def test_determinism(pair):
    before = torch.get_rng_state()
    a, ha = train(*pair, TINY, steps=6, lr=1e-3, output_window=WINDOW, seed=3, noise_std=0.1)
    b, hb = train(*pair, TINY, steps=6, lr=1e-3, output_window=WINDOW, seed=3, noise_std=0.1)
    c, hc = train(*pair, TINY, steps=6, lr=1e-3, output_window=WINDOW, seed=4, noise_std=0.1)
    assert ha["loss"] == hb["loss"]
    for key, value in _state(a).items():
        assert torch.equal(value, _state(b)[key])
    assert ha["loss"] != hc["loss"]
    # The caller's global torch RNG is left alone.
    assert torch.equal(before, torch.get_rng_state())


def test_cancel_returns_the_model_so_far(pair):
    cancel = threading.Event()
    seen = []

    def progress(step, parts):
        seen.append((step, sorted(parts)))
        if step == 3:
            cancel.set()

    model, history = train(*pair, TINY, steps=50, output_window=WINDOW, progress=progress, cancel=cancel)
    assert history["cancelled"] and history["steps_done"] == 3 == len(history["loss"])
    assert seen[0] == (1, ["foreground", "loss", "pull", "push", "reg"])
    assert model.meta["steps"] == 3 and model.meta["complete"] is False
    assert not model.net.training


def test_checkpoints_are_written_and_loadable(pair, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    model, _ = train(*pair, TINY, steps=5, output_window=WINDOW, checkpoint_every=2, checkpoint_path=path)
    saved = load_model(path)
    assert saved.meta["steps"] == 4 and saved.meta["complete"] is False
    assert saved.config == TINY
    assert model.meta["complete"] is True and model.meta["steps"] == 5


def test_meta(pair):
    model, history = train(*pair, TINY, steps=3, output_window=WINDOW, command="shiftseg train ...")
    meta = model.meta
    assert meta["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert meta["training_window"] == [WINDOW, WINDOW]
    assert meta["final_loss"] == pytest.approx(np.mean(history["loss"]))
    assert meta["command"] == "shiftseg train ..."
    assert meta["loss"]["delta_d"] == 3.0
    assert "object_diameter" not in meta  # free embeddings have no pixel scale to keep


def test_spatial_model_records_the_object_diameter_it_learnt(pair):
    from napari_shiftseg.imaging.metrics import median_diameter

    spatial = dataclasses.replace(TINY, embedding="spatial", embed_dim=3, position_scale=0.25)
    model, _ = train(*pair, spatial, steps=2, output_window=WINDOW)
    assert model.meta["object_diameter"] == pytest.approx(median_diameter([pair[1]]), abs=0.05)
    # Continued training on generated data (no labels to measure) keeps the base's value.
    again, _ = train(lambda seed: pair, None, model, steps=1, output_window=WINDOW)
    assert again.meta["object_diameter"] == model.meta["object_diameter"]


def test_sources(pair):
    calls = []

    def generator(seed):
        calls.append(seed)
        return synth.random_objects((56, 56), n_objects=8, radius=4, seed=seed % 1000)

    _, history = train(generator, None, TINY, steps=3, output_window=WINDOW, batch_size=2)
    assert len(calls) == 6 and len(set(calls)) == 6  # fresh data for every crop
    _, history = train([pair, pair], None, TINY, steps=2, output_window=WINDOW)
    assert history["steps_done"] == 2
    with pytest.raises(TypeError, match="labels must be None"):
        train(generator, pair[1], TINY, steps=1)
    with pytest.raises(TypeError, match="source must be"):
        train(pair[0], None, TINY, steps=1)


def test_continue_training_records_provenance(pair):
    first, _ = train(*pair, TINY, steps=2, output_window=WINDOW, command="first run")
    second, _ = train(*pair, first, steps=2, output_window=WINDOW)
    assert second.config == TINY
    assert second.meta["initialised_from"]["command"] == "first run"
    assert first.net is not second.net


def test_bad_inputs(pair):
    image, labels = pair
    with pytest.raises(ShiftSegError, match="smaller than the training window"):
        train(image[:10, :10], labels[:10, :10], TINY, steps=1, output_window=WINDOW)
    with pytest.raises(ShiftSegError, match="no objects"):
        train(image, np.zeros_like(labels), TINY, steps=1, output_window=WINDOW)
    with pytest.raises(ShiftSegError, match="differ"):
        train(image, labels[:-1], TINY, steps=1, output_window=WINDOW)
    with pytest.raises(ShiftSegError, match="the model is 2D"):
        train(image[None].repeat(3, 0), labels[None].repeat(3, 0), TINY, steps=1)
    with pytest.raises(ShiftSegError, match="steps must be positive"):
        train(image, labels, TINY, steps=0)
    with pytest.raises(ShiftSegError, match="lr_schedule"):
        train(image, labels, TINY, steps=1, lr_schedule="linear")
    with pytest.raises(TypeError, match="config"):
        train(image, labels, {"levels": 2}, steps=1)
    with pytest.raises(ShiftSegError, match="unknown device"):
        train(image, labels, TINY, steps=1, output_window=WINDOW, device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ShiftSegError, match="no CUDA GPU"):
            train(image, labels, TINY, steps=1, output_window=WINDOW, device="cuda")


def test_default_window_is_above_grid():
    for levels in (1, 2, 3, 4):
        g = UNetGeometry(ndim=2, levels=levels)
        window = default_training_window(g)
        assert min(window) > g.grid
        g.check_training_window(window)
        assert g.output_size(g.training_input_size(window[0])) == window[0]


@given(levels=st.integers(1, 3), window=st.integers(5, 40), pad=st.booleans(),
       extra=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_crop_aligns_input_and_labels(levels, window, pad, extra, seed):
    """The label window is exactly the input crop's output region (centre-cropped to w)."""
    g = UNetGeometry(ndim=2, levels=levels)
    crop = _Crop.plan(g, (window, window))
    assert crop.input == (g.training_input_size(window),) * 2
    size = window + extra if pad else crop.input[0] + extra
    codes = np.arange(size * size, dtype=np.int32).reshape(size, size) + 1
    prepared = _Prepared(codes.astype(np.float32), codes, crop, pad=pad)
    x, y = prepared.sample(np.random.default_rng(seed))
    assert x.shape == (1, *crop.input) and y.shape == crop.window  # channels first
    x = x[0]
    norm = percentile_normalization(codes.astype(np.float32), 1.0, 99.8)
    inner = x[crop.front[0]:crop.front[0] + window, crop.front[1]:crop.front[1] + window]
    np.testing.assert_allclose(inner * (norm.high - norm.low) + norm.low, y, rtol=1e-4, atol=0.5)
    # The raw output spans input[context/2 : context/2 + raw] and holds the window at raw_crop.
    raw_start = g.context_per_side
    assert all(raw_start + s.start == f for s, f in zip(crop.raw_crop, crop.front))


def _flip_symmetric(net):
    """Make every kernel symmetric under flips, so the valid U-Net commutes with flips."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                w = module.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
                w.copy_((w + w.transpose(-1, -2)) / 2)  # and under swapping the two axes
    return net


def test_geometric_augmentation_realigns_output(pair):
    """Flip/transpose the input crops, run the net, _unmove: equals the plain output exactly."""
    net = _flip_symmetric(UNet(TINY)).eval()
    crop = _Crop.plan(TINY.geometry, (WINDOW, WINDOW))
    prepared = _Prepared(pair[0], pair[1], crop, pad=True)
    rng = np.random.default_rng(0)
    moves_only = dataclasses.replace(NO_AUGMENTATION, flips=True, transpose=True)
    x, _, moves = _batch(lambda r: prepared, rng, 6, moves_only)
    assert any(m[0] for m in moves) and any(m[1] for m in moves) and not all(m[0] for m in moves)

    def undo(xi, axes, transpose):
        xi = np.swapaxes(xi, -1, -2) if transpose else xi
        return np.flip(xi, axes) if axes else xi

    plain = torch.from_numpy(np.stack([undo(xi, *m) for xi, m in zip(x[:, 0], moves)])[:, None].copy())
    with torch.no_grad():
        expected = net(plain)
        got = _unmove(net(torch.from_numpy(x)), moves)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_intensity_augmentation_changes_crops_but_not_labels(pair):
    crop = _Crop.plan(TINY.geometry, (WINDOW, WINDOW))
    prepared = _Prepared(pair[0], pair[1], crop, pad=True)
    for seed in range(3):  # one crop per batch: the crop position is drawn before the intensity
        plain_x, plain_y, _ = _batch(lambda r: prepared, np.random.default_rng(seed), 1, NO_AUGMENTATION)
        aug_x, aug_y, _ = _batch(lambda r: prepared, np.random.default_rng(seed), 1,
                                 Augmentation(flips=False, transpose=False))
        np.testing.assert_array_equal(plain_y, aug_y)
        assert aug_x.dtype == np.float32 and np.isfinite(aug_x).all()
        assert np.abs(aug_x - plain_x).mean() > 1e-3


def test_model_is_returned_on_cpu_in_eval_mode(pair):
    model, _ = train(*pair, TINY, steps=1, output_window=WINDOW)
    assert isinstance(model, Model) and not model.net.training
    assert next(model.net.parameters()).device.type == "cpu"


@pytest.mark.parametrize("ndim", [2, 3])
def test_unmove_turns_offset_vectors(ndim):
    """A vector field computed on a moved crop, moved back, equals the field of the plain crop.

    The "network" here is the image gradient (one channel per axis), the simplest vector-valued
    equivariant map: flipping an axis negates that component, transposing swaps two. Without the
    turn, a spatial head is asked for opposite offsets on flipped crops and learns zero.
    """
    from napari_shiftseg.training.augment import move, unmove

    rng = np.random.default_rng(ndim)
    x = rng.random((6,) * ndim)

    def gradient(img):
        return torch.from_numpy(np.stack(np.gradient(img)) .copy())

    plain = gradient(x)
    for axes in [(), (0,), (ndim - 1,), tuple(range(ndim))]:
        for transpose in (False, True):
            moved = np.ascontiguousarray(move(x, axes, transpose))
            got = unmove(gradient(moved), axes, transpose, vector_channels=ndim)
            torch.testing.assert_close(got, plain)
            if axes or transpose:
                # The spatial move alone is wrong for vectors: the old behaviour must fail.
                assert not torch.allclose(unmove(gradient(moved), axes, transpose), plain)
