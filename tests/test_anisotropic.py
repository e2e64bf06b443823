"""Anisotropic networks (per-axis pooling factors): the size rules hold axis by axis, the
network is periodic-F_a shift equivariant on each axis, and exact tiling equals whole-image
inference."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_shiftseg.inference.predict import predict_embeddings, predict_whole
from napari_shiftseg.network.geometry import AxisGeometry, UNetGeometry
from napari_shiftseg.network.modelio import Model, load_model, save_model
from napari_shiftseg.network.tiling import tile_plan
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)


def simulate(size: int, factors, r: int):
    """Walk one axis through the valid U-Net layer by layer; None where a pooling does not
    divide or a size drops to zero (the reference the closed-form rules must match)."""
    skips = []
    for f in factors:
        size -= r
        if size <= 0 or size % f:
            return None
        skips.append(size)
        size //= f
    size -= r  # bottom
    if size <= 0:
        return None
    for f, skip in zip(reversed(factors), reversed(skips)):
        size = size * f
        if size > skip:
            return None
        size -= r
        if size <= 0:
            return None
    return size


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.sampled_from([2, 4]),
       st.integers(1, 200))
def test_axis_rules_match_a_layer_by_layer_walk(factors, r, size):
    a = AxisGeometry(tuple(factors), r)
    out = simulate(size, factors, r)
    assert a.is_valid_input(size) == (out is not None)
    if out is not None:
        assert a.output_size(size) == out
        # tiles: an n·F output tile reads a valid window and keeps crop_front..crop_front+tile
        tile = a.cover(size)
        assert tile % a.grid == 0
        assert simulate(a.tile_input_size(tile), factors, r) == a.tile_compute_size(tile)


def test_isotropic_factors_are_stored_as_one_factor():
    g = UNetGeometry(ndim=3, levels=2, factors=[[2, 2, 2], [2, 2, 2]])
    assert g.factors is None and g.factor == 2 and g == UNetGeometry(ndim=3, levels=2)


def test_anisotropic_geometry_numbers():
    g = UNetGeometry(ndim=3, levels=3, factors=((1, 2, 2), (2, 2, 2), (2, 2, 2)))
    assert g.grids == (4, 8, 8)
    assert g.capacity == 4 * 8 * 8
    assert g.contexts == (4 * (2 * (1 + 1 + 2) + 4), 4 * (3 * 8 - 2), 4 * (3 * 8 - 2))
    assert g.snap_tile((10, 10, 10)) == (12, 8, 8)
    assert g.check_tile((4, 16, 8)) == (4, 16, 8)
    with pytest.raises(ShiftSegError, match=r"the grid \(4, 8, 8\)"):
        g.check_tile((6, 16, 8))
    # one number where the axes disagree is an error that says so, not a silent axis-0 answer
    with pytest.raises(ShiftSegError, match="differs per axis"):
        _ = g.grid
    assert g.phase((1, 0, 0)) == 64 and g.phase((0, 0, 1)) == 1
    assert "(4, 8, 8)" in str(g.describe()["f^l"])


@pytest.mark.parametrize("factors, match", [
    (((1, 2, 2),), "one row per level"),
    (((1, 2), (2, 2)), "one factor per axis"),
    (((5, 2, 2), (2, 2, 2)), "between 1 and 4"),
    (((1, 2, 2), (2, 2, "x")), "whole number"),
    ("abc", "one row per level"),
])
def test_bad_factors_are_named(factors, match):
    with pytest.raises(ShiftSegError, match=match):
        UNetGeometry(ndim=3, levels=2, factors=factors)


def test_anisotropic_same_padding_is_refused():
    with pytest.raises(ShiftSegError, match="valid padding"):
        UNetGeometry(ndim=2, levels=2, factors=((1, 2), (2, 2)), padding="same")


def make_net(factors, ndim=3, seed=0, **config):
    torch.manual_seed(seed)
    geometry = UNetGeometry(ndim=ndim, levels=len(factors), factors=factors)
    return UNet(UNetConfig(geometry=geometry, base_channels=2, **config))


FACTORS_3D = [((1, 2, 2), (2, 2, 2)), ((1, 2, 2), (1, 2, 2)), ((2, 1, 2), (1, 2, 2))]


@pytest.mark.parametrize("factors", FACTORS_3D)
@pytest.mark.parametrize("upsampling", ["learnt", "nearest"])
def test_output_shape_and_per_axis_shift_equivariance(factors, upsampling):
    net = make_net(factors, upsampling=upsampling)
    g = net.geometry
    size = tuple(a.nearest_valid_input(a.min_input_size + 2 * a.grid) for a in g.axes)
    rng = np.random.default_rng(0)
    for axis, a in enumerate(g.axes):
        for shift, equivariant in ((a.grid, True), (1, a.grid == 1)):
            big = torch.from_numpy(rng.standard_normal(
                (1, 1) + tuple(s + (shift if i == axis else 0) for i, s in enumerate(size))).astype(np.float32))
            cut = [slice(0, s) for s in size]
            moved = list(cut)
            moved[axis] = slice(shift, shift + size[axis])
            with torch.no_grad():
                out_a, out_b = net(big[(..., *cut)]), net(big[(..., *moved)])
            assert tuple(out_a.shape[2:]) == g.output_size(size)
            n = out_a.shape[2 + axis] - shift
            ia = [slice(None)] * 2 + [slice(None)] * 3
            ib = list(ia)
            ia[2 + axis], ib[2 + axis] = slice(shift, shift + n), slice(0, n)
            diff = float((out_a[tuple(ia)] - out_b[tuple(ib)]).abs().max())
            if equivariant:
                assert diff <= 1e-5 * float(out_a.abs().max())
            elif upsampling == "learnt":
                assert diff > 1e-6


@st.composite
def aniso_cases(draw):
    factors = draw(st.sampled_from(FACTORS_3D + [((1, 2), (2, 2))]))
    ndim = len(factors[0])
    head = draw(st.sampled_from([{}, {"embedding": "spatial", "position_scale": 0.25}]))
    net = make_net(factors, ndim=ndim, seed=draw(st.integers(0, 100)),
                   upsampling=draw(st.sampled_from(["learnt", "nearest"])), **head)
    grids = net.geometry.grids
    high = 24 if ndim == 2 else 10
    shape = tuple(draw(st.lists(st.integers(1, high), min_size=ndim, max_size=ndim)))
    tile = tuple(draw(st.integers(1, 3)) * g for g in grids)
    return net, shape, tile, draw(st.integers(0, 1000))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aniso_cases())
def test_exact_tiling_equals_whole_image_anisotropic(case):
    net, shape, tile, seed = case
    image = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    whole = predict_whole(image, net, device="cpu")
    plan = tile_plan(shape, net.geometry, tile)
    assert all(t % g == 0 for t, g in zip(plan.tile, net.geometry.grids))
    tiled = predict_embeddings(image, net, tile=tile, device="cpu").compute(scheduler="sync")
    assert tiled.shape == whole.shape == (net.config.out_channels, *shape)
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max() + 1e-12


def test_anisotropic_model_file_round_trip(tmp_path):
    net = make_net(((1, 2, 2), (2, 2, 2)), embedding="spatial", position_scale=0.25)
    save_model(Model(net, {"note": "aniso"}), tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert back.geometry == net.geometry and back.geometry.factors == ((1, 2, 2), (2, 2, 2))
    x = torch.randn((1, 1) + back.geometry.nearest_valid_input((20, 30, 30)))
    with torch.no_grad():
        assert torch.equal(back.net(x), net(x))


# ---- command line: train an anisotropic network, check it, segment with it ------------------
def test_suggest_factors_follows_the_voxel_size():
    from napari_shiftseg.training.train import suggest_factors

    assert suggest_factors((3.0, 1.0, 1.0), 3) == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert suggest_factors((5.0, 1.0, 1.0), 3) == ((1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert suggest_factors((1.0, 1.0, 1.0), 3) is None
    with pytest.raises(ShiftSegError, match="positive"):
        suggest_factors((0.0, 1.0, 1.0), 2)


def test_per_axis_position_scale_is_exact_and_checked():
    from napari_shiftseg.training.train import physical_position_scale

    assert physical_position_scale((3.0, 1.0, 1.0), 0.25) == (0.75, 0.25, 0.25)
    assert physical_position_scale((2.0, 2.0), 0.25) == 0.25
    net = make_net(((1, 2, 2), (2, 2, 2)), embedding="spatial", position_scale=(0.75, 0.25, 0.25))
    image = np.random.default_rng(0).normal(size=(9, 21, 19)).astype(np.float32)
    whole = predict_whole(image, net, device="cpu")
    tiled = predict_embeddings(image, net, tile=(4, 8, 8), device="cpu").compute(scheduler="sync")
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max()
    with pytest.raises(ShiftSegError, match="one value per axis"):
        make_net(((1, 2, 2), (2, 2, 2)), embedding="spatial", position_scale=(0.75, 0.25))
    with pytest.raises(ShiftSegError, match=r"\(0, 10\]"):
        make_net(((1, 2, 2), (2, 2, 2)), embedding="spatial", position_scale=(0.75, 0.0, 0.25))


def test_cli_anisotropic_train_check_segment(tmp_path, capsys):
    import tifffile
    import zarr

    from napari_shiftseg.cli import main
    from napari_shiftseg.synthetic import synth

    image, labels = synth.nuclei((24, 48, 48), seed=3)
    stack, stack_labels = image[::3], labels[::3]  # z step 3x the pixel
    tifffile.imwrite(tmp_path / "img.tif", stack.astype(np.float32), imagej=True, resolution=(1.0, 1.0),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "lab.tif", stack_labels.astype(np.uint16))
    model = tmp_path / "aniso.safetensors"
    argv = ["train", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
            "--levels", "2", "--base-channels", "2", "--factors", "auto", "--window", "6,12,12",
            "--steps", "2", "--quiet", "--no-tune", "-o", str(model)]
    assert main(argv) == 0
    assert "pooling factors ((1, 2, 2), (2, 2, 2)), position scale (0.75, 0.25, 0.25)" in capsys.readouterr().err
    assert load_model(model).geometry.grids == (2, 4, 4)
    assert load_model(model).config.position_scale == (0.75, 0.25, 0.25)
    assert main(["check", str(tmp_path / "img.tif"), "-m", str(model), "--tile", "4,8,8"]) == 0
    out = capsys.readouterr().out
    assert "(exact" in out
    out_zarr = tmp_path / "seg.zarr"
    assert main(["segment", str(tmp_path / "img.tif"), "-m", str(model), "--tile", "5,9,9",
                 "-o", str(out_zarr), "--device", "cpu", "--diameter", "none", "--quiet"]) == 0
    group = zarr.open_group(out_zarr, mode="r")
    assert group["labels/instances/0"].shape == stack.shape
    assert group["embeddings"].chunks[1:] == (6, 8, 8)  # 5,9,9 snapped to the per-axis grid (2, 4, 4)
    # an explicit row per level that does not match --levels is named
    argv[argv.index("auto")] = "1,2,2"
    assert main(argv) == 2
    assert "one row per level" in capsys.readouterr().err
