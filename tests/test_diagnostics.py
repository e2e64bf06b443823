"""Lazy diagnostics: stitch check, tile borders, seams, phases, the f^l grid."""

import dask.array as da
import numpy as np
import pytest
import torch

from napari_shiftseg.inference.diagnostics import (
    _reference_crop,
    grid_lines,
    phase_map,
    seam_map,
    stitch_check,
    tile_boundaries,
)
from napari_shiftseg.inference.predict import predict_embeddings, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.tiling import tile_plan
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)


def make_net(ndim=2, levels=3, base=3, seed=0):
    torch.manual_seed(seed)
    return UNet(UNetConfig(geometry=UNetGeometry(ndim=ndim, levels=levels), base_channels=base))


@pytest.fixture(scope="module")
def net():
    return make_net()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((61, 75)).astype(np.float32)


def test_stitch_check_exact_is_zero_naive_is_not(net, image):
    whole = np.abs(predict_whole(image, net, device="cpu")).max()
    assert stitch_check(image, net, 24, device="cpu") <= 1e-5 * whole
    assert stitch_check(image, net, 20, mode="naive", device="cpu") > 1e-3 * whole
    assert stitch_check(image, net, 20, mode="blend", device="cpu") > 1e-3 * whole


def test_stitch_check_region(net, image):
    whole = np.abs(predict_whole(image, net, device="cpu")).max()
    region = (slice(30, 45), slice(10, 30))
    assert stitch_check(image, net, 16, region=region, device="cpu") <= 1e-5 * whole
    assert stitch_check(image, net, 20, mode="naive", region=region, device="cpu") > 1e-5 * whole
    with pytest.raises(ShiftSegError, match="non-empty"):
        stitch_check(image, net, 16, region=(slice(5, 5),), device="cpu")


def test_region_reference_equals_whole_image(net, image):
    """The cheap crop reference agrees with the whole image inside the region."""
    whole = predict_whole(image, net, device="cpu", normalization=(0.0, 1.0))
    g = net.config.geometry
    for region in [(slice(30, 45), slice(50, 75)), (slice(0, 7), slice(33, 34)), (slice(60, 61), slice(0, 75))]:
        crop, inner = _reference_crop(region, image.shape, g)
        assert all(c.start % g.grid == 0 for c in crop)
        ref = predict_whole(image[crop], net, device="cpu", normalization=(0.0, 1.0))
        np.testing.assert_allclose(ref[(slice(None),) + inner], whole[(slice(None),) + region], atol=1e-6)


def test_tile_boundaries():
    plan = tile_plan((20, 13), UNetGeometry(ndim=2, levels=2), 8)
    b = tile_boundaries(plan)
    assert isinstance(b, da.Array) and b.dtype == bool and b.chunks == plan.chunks
    expected = np.zeros((20, 13), bool)
    expected[[7, 8, 15, 16], :] = True
    expected[:, [7, 8]] = True
    np.testing.assert_array_equal(b.compute(), expected)
    stacked = tile_boundaries(plan, shape=(3, 20, 13))
    np.testing.assert_array_equal(stacked[2].compute(), expected)
    with pytest.raises(ShiftSegError, match="does not end"):
        tile_boundaries(plan, shape=(20, 14))


def test_seam_map_finds_a_planted_seam():
    plan = tile_plan((24, 30), UNetGeometry(ndim=2, levels=2), 8)
    y, x = np.mgrid[:24, :30].astype(np.float32)
    emb = np.stack([0.1 * y, 0.1 * x, 0 * x])  # smooth: every neighbour differs by 0.1
    emb[2, :, 16:] += 5.0  # a jump of 5 across the tile border between x = 15 and x = 16
    seams = seam_map(da.from_array(emb, chunks=(3, 5, 7)), plan)
    assert isinstance(seams, da.Array) and seams.dtype == np.float32 and seams.shape == (24, 30)
    s = seams.compute()
    borders = tile_boundaries(plan).compute()
    assert (s[~borders] == 0).all()
    np.testing.assert_allclose(s[:, 15], np.hypot(0.1, 5.0) / 0.1, rtol=1e-4)
    np.testing.assert_allclose(s[:, 16], np.hypot(0.1, 5.0) / 0.1, rtol=1e-4)
    np.testing.assert_allclose(s[7, :14], 1.0, rtol=1e-4)  # seamless borders: about 1
    assert s[:, [0, -1]].max() < 2 and s[[0, -1], :14].max() < 2  # image borders: no seam


def test_seam_map_exact_vs_naive(net, image):
    exact_plan = tile_plan(image.shape, net.config.geometry, 16)
    exact = seam_map(predict_embeddings(image, net, 16, device="cpu"), exact_plan).compute()
    assert np.isfinite(exact).all() and exact.max() < 20
    with pytest.raises(ShiftSegError, match="do not match"):
        seam_map(np.zeros((4, 10, 10), np.float32), exact_plan)


def test_phase_map_matches_geometry():
    for g, shape in [(UNetGeometry(ndim=2, levels=3), (19, 21)), (UNetGeometry(ndim=3, levels=1), (4, 5, 3))]:
        phases = phase_map(shape, g, chunks=4)
        assert isinstance(phases, da.Array) and phases.dtype == np.int32
        values = phases.compute()
        for pos in np.ndindex(*shape):
            assert values[pos] == g.phase(pos)
        assert len(np.unique(values)) == g.capacity
    stack = phase_map((3, 19, 21), UNetGeometry(ndim=2, levels=3)).compute()
    np.testing.assert_array_equal(stack[0], stack[2])
    assert len(np.unique(stack)) == 64


def test_grid_lines_and_laziness():
    g = UNetGeometry(ndim=2, levels=3)
    lines = grid_lines((17, 20), g).compute()
    assert lines[0].all() and lines[:, 16].all() and lines[8].all()
    assert not lines[3, 3] and lines.sum() == 17 * 3 + 20 * 3 - 9
    big = phase_map((2000, 2000, 2000), UNetGeometry(ndim=3, levels=3))  # 8e9 voxels, lazy
    assert big[1000, 3, 1:4].compute().tolist() == [3 * 8 + x for x in (1, 2, 3)]
    assert grid_lines((2000, 2000, 2000), g)[5, 5, :9].compute().tolist() == [True] + [False] * 7 + [True]


def test_seam_map_on_a_slice_stack():
    net = make_net(2, 2, base=2)
    stack = np.random.default_rng(1).random((3, 20, 22)).astype(np.float32)
    emb = predict_embeddings(stack, net, 8, device="cpu", per_slice=True)
    plan = tile_plan((20, 22), net.config.geometry, 8)
    seams = seam_map(emb, plan)
    assert seams.shape == (3, 20, 22) and seams.chunks[0] == (1, 1, 1)
    one = seam_map(emb[:, 1], plan).compute()
    np.testing.assert_allclose(seams[1].compute(), one, rtol=1e-6)
    assert (seams.compute()[:, ~tile_boundaries(plan).compute()] == 0).all()


def test_seam_error_is_zero_for_exact_and_large_for_naive(image):
    from helpers import tiny_net

    from napari_shiftseg.inference.diagnostics import reference_tile, seam_error

    model = tiny_net(levels=3, base=3)  # He init: an untrained default-init net is nearly flat
    g = model.geometry
    errors = {}
    for mode, tile in (("exact", 24), ("naive", 20)):
        plan = tile_plan(image.shape, g, tile, mode)
        emb = predict_embeddings(image, model, tile=tile, device="cpu", mode=mode)
        ref = predict_embeddings(image, model, tile=reference_tile(plan, g), device="cpu", mode="exact")
        assert reference_tile(plan, g) != plan.tile
        seam = seam_error(emb, ref, plan)
        assert isinstance(seam, da.Array) and seam.shape == image.shape
        errors[mode] = seam.compute()
        inside = ~tile_boundaries(plan).compute()
        assert (errors[mode][inside] == 0).all()
    scale = np.abs(predict_whole(image, model, device="cpu")).max()
    assert errors["exact"].max() <= 1e-5 * scale
    assert errors["naive"].max() > 1e-2 * scale
    with pytest.raises(ShiftSegError, match="differ in shape"):
        seam_error(np.zeros((4, 5, 5)), np.zeros((4, 5, 6)), plan)


def test_run_diagnostics_are_the_run_s_maps():
    from helpers import tiny_net

    from napari_shiftseg.inference.diagnostics import RUN_DIAGNOSTICS, run_diagnostics
    from napari_shiftseg.inference.predict import predict_embeddings, predict_plan

    net = tiny_net(2, levels=2)
    image = np.random.default_rng(0).random((40, 44)).astype(np.float32)
    exact = predict_plan(image, net, 12)
    maps = run_diagnostics(predict_embeddings(image, net, plan=exact, device="cpu"), image, net, exact, device="cpu")
    assert tuple(maps) == RUN_DIAGNOSTICS and all(m.shape == image.shape for m in maps.values())
    assert float(maps["seams"].max().compute()) < 1e-4          # exact tiling: no seams
    assert maps["tile_boundaries"].compute()[:, 11:13].all()     # the border between tiles 0 and 1
    naive = predict_plan(image, net, 10, "naive")
    seams = run_diagnostics(predict_embeddings(image, net, plan=naive, device="cpu"), image, net, naive,
                            device="cpu", kinds=("seams",))["seams"]
    assert float(seams.max().compute()) > 1e-3                   # off the grid: seams show
    with pytest.raises(ValueError, match="unknown diagnostics"):
        run_diagnostics(image[None], image, net, exact, kinds=("colour",))
