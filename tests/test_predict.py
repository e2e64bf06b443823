"""Lazy exact tile-and-stitch inference, its errors, and device handling."""

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_shiftseg.imaging.normalize import Normalization
from napari_shiftseg.inference.predict import predict_embeddings, predict_plan, predict_whole
from napari_shiftseg.network import devices
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import Model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)


def make_net(ndim=2, levels=2, base=2, seed=0, **config):
    padding = config.pop("padding", "valid")
    torch.manual_seed(seed)
    geometry = UNetGeometry(ndim=ndim, levels=levels, padding=padding)
    return UNet(UNetConfig(geometry=geometry, base_channels=base, **config))


class CountingNet:
    """Wraps a net's forward to count tile batches and tiles (works with threads)."""

    def __init__(self, net):
        self.net, self.calls, self.tiles = net, 0, 0
        forward = net.forward

        def counted(x):
            self.calls += 1
            self.tiles += x.shape[0]
            return forward(x)

        net.forward = counted


def max_rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ---- exactness ---------------------------------------------------------------------------------
@st.composite
def exact_cases(draw, ndim):
    levels = draw(st.sampled_from([2, 3] if ndim == 2 else [1, 2]))
    base = draw(st.integers(2, 4 if ndim == 2 else 2))
    seed = draw(st.integers(0, 1000))
    upsampling = draw(st.sampled_from(["learnt", "nearest"]))
    # Both embedding heads: spatial positions are added after stitching, from global coordinates.
    head = draw(st.sampled_from([{}, {"embedding": "spatial", "position_scale": 0.25}]))
    grid = 2**levels
    high = 50 if ndim == 2 else (12 if levels == 1 else 9)
    shape = tuple(draw(st.lists(st.integers(1, high), min_size=ndim, max_size=ndim)))
    n = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    tile = tuple(k * grid for k in n)
    return make_net(ndim, levels, base, seed, upsampling=upsampling, **head), shape, tile, seed


def _check_exact(case):
    net, shape, tile, seed = case
    image = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    whole = predict_whole(image, net, device="cpu")
    tiled = predict_embeddings(image, net, tile=tile, device="cpu").compute(scheduler="sync")
    assert tiled.shape == whole.shape == (net.config.out_channels, *shape)
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max() + 1e-12


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exact_cases(2))
def test_exact_tiling_equals_whole_image_2d(case):
    _check_exact(case)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exact_cases(3))
def test_exact_tiling_equals_whole_image_3d(case):
    _check_exact(case)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), shape=st.tuples(st.integers(20, 48), st.integers(20, 48)),
       tile=st.integers(9, 19).filter(lambda t: t % 8))
def test_naive_tiles_off_the_grid_differ_hypothesis(seed, shape, tile):
    net = make_net(2, 3, base=3, seed=seed)
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    whole = predict_whole(image, net, device="cpu")
    naive = predict_embeddings(image, net, tile=tile, mode="naive", device="cpu").compute(scheduler="sync")
    assert max_rel(naive, whole) > 1e-6


def test_naive_tiles_off_the_grid_differ():
    net = make_net(2, 3, base=3)
    image = np.random.default_rng(1).random((45, 41)).astype(np.float32)
    whole = predict_whole(image, net, device="cpu")
    naive = predict_embeddings(image, net, tile=12, mode="naive", device="cpu").compute()
    assert max_rel(naive, whole) > 1e-3
    # the same tiles on the grid (and no border snapping) are exact in naive mode too
    square = image[:32, :32]
    same = predict_embeddings(square, net, tile=16, mode="naive", device="cpu").compute()
    assert max_rel(same, predict_whole(square, net, device="cpu")) < 1e-5


def test_blend_mode_runs_and_is_close():
    net = make_net(2, 2, base=3)
    image = np.random.default_rng(2).random((30, 37)).astype(np.float32)
    blend = predict_embeddings(image, net, tile=10, mode="blend", device="cpu")
    assert blend.shape == (4, 30, 37)
    out = blend.compute()
    assert np.isfinite(out).all()
    assert max_rel(out, predict_whole(image, net, device="cpu")) < 0.5


def test_batching_and_per_slice_match():
    net = make_net(2, 2, base=2)
    image = np.random.default_rng(3).random((3, 26, 35)).astype(np.float32)
    one = predict_embeddings(image, net, tile=8, per_slice=True, device="cpu")
    many = predict_embeddings(image, net, tile=8, per_slice=True, batch_size=2, device="cpu")
    whole = predict_whole(image, net, per_slice=True, device="cpu")
    assert one.shape == (4, 3, 26, 35) and many.chunks[1] == (2, 1)
    np.testing.assert_allclose(one.compute(), whole, atol=1e-6)
    np.testing.assert_allclose(many.compute(), whole, atol=1e-6)
    flat = predict_embeddings(image[1], net, tile=8, batch_size=3, device="cpu",
                              normalization=Normalization(float(np.percentile(image, 1)),
                                                          float(np.percentile(image, 99.8))))
    assert flat.chunks[2] == (24, 11)
    np.testing.assert_allclose(flat.compute(), whole[:, 1], atol=1e-6)


def test_sources_and_channel_axis_agree(tmp_path):
    net = make_net(2, 2, base=2, in_channels=2, foreground_head=False)
    image = np.random.default_rng(4).random((21, 19, 2)).astype(np.float32)
    ref = predict_whole(image, net, channel_axis=-1, device="cpu")
    assert ref.shape == (3, 21, 19)  # no foreground head: E channels
    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=image.shape, chunks=(8, 8, 2),
                        dtype="f4")
    z[:] = image
    for source in (image, da.from_array(image, chunks=(7, 5, 1)), z):
        out = predict_embeddings(source, Model(net), tile=8, channel_axis=2, device="cpu")
        assert out.dtype == np.float32 and out.chunks[0] == (3,)
        np.testing.assert_allclose(out.compute(), ref, atol=1e-6)


def test_same_padding_model_goes_through_the_same_code():
    net = make_net(2, 2, base=2, padding="same")
    image = np.random.default_rng(5).random((19, 23)).astype(np.float32)
    out = predict_embeddings(image, net, tile=8, device="cpu").compute()
    assert out.shape == (4, 19, 23) and np.isfinite(out).all()
    assert predict_whole(image, net, device="cpu").shape == (4, 19, 23)


# ---- laziness ----------------------------------------------------------------------------------
def test_nothing_runs_until_asked_and_slices_touch_only_their_tiles():
    net = make_net(2, 2, base=2)
    counter = CountingNet(net)
    image = np.random.default_rng(6).random((40, 40)).astype(np.float32)
    emb = predict_embeddings(image, net, tile=8, device="cpu")
    assert counter.calls == 0
    assert emb.numblocks == (1, 5, 5)
    emb[:, 3].compute()  # one row: the 5 tiles of tile-row 0
    assert counter.tiles == 5
    emb[:, 17:18, 30].compute()  # one voxel: one tile
    assert counter.tiles == 6


def test_model_is_a_single_graph_key():
    net = make_net(2, 2)
    emb = predict_embeddings(np.ones((30, 30), np.float32), net, tile=8, device="cpu")
    graph = dict(emb.__dask_graph__())
    net_keys = [k for k in graph if str(k).startswith("shiftseg-net-")]
    assert len(net_keys) == 1
    assert sum(isinstance(v, torch.nn.Module) for v in graph.values()) <= 1


def test_big_lazy_volume_one_slice():
    # 512 x 1024 x 1024 float32 = 2 GiB, never materialised
    volume = da.zeros((512, 1024, 1024), dtype=np.float32, chunks=(64, 256, 256))
    net = make_net(2, 3, base=2)
    emb = predict_embeddings(volume, net, tile=256, per_slice=True, device="cpu")
    assert emb.shape == (4, 512, 1024, 1024)
    out = emb[:, 200].compute()
    assert out.shape == (4, 1024, 1024) and np.isfinite(out).all()


def test_big_lazy_3d_volume_reads_only_needed_chunks():
    generated = []

    def block(block_info=None):
        generated.append(block_info[None]["chunk-location"])
        shape = block_info[None]["chunk-shape"]
        # seeded by the chunk's place, not by the order of reads: the same volume every time
        return np.random.default_rng(list(block_info[None]["chunk-location"])).random(shape, dtype=np.float32)

    volume = da.map_blocks(block, chunks=((64,) * 8, (128,) * 8, (128,) * 8), dtype=np.float32,
                           meta=np.empty((0, 0, 0), np.float32))
    net = make_net(3, 1, base=1)
    emb = predict_embeddings(volume, net, tile=(16, 128, 128), device="cpu", normalization=(0.0, 1.0),
                             batch_size=1)
    assert not generated
    out = emb[:, 300, 500:530, 640:700].compute()
    assert out.shape == (4, 30, 60)
    # the source chunks around two tiles' windows, never the whole volume (512 chunks)
    assert 0 < len(generated) <= 24
    # by default (3D, CPU) a tile runs with its neighbours along the last axis (at most
    # AUTO_BATCH_MAX per network call): the two tiles' batches, still never the whole volume
    generated.clear()
    emb = predict_embeddings(volume, net, tile=(16, 128, 128), device="cpu", normalization=(0.0, 1.0))
    np.testing.assert_allclose(emb[:, 300, 500:530, 640:700].compute(), out, atol=1e-5)
    assert 0 < len(generated) <= 48


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros((5, 20, 20)), {}, "per_slice=True"),
        (np.zeros((0, 20)), {}, "empty"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "real numbers"),
        (np.zeros((20, 20), complex), {}, "real numbers"),
        (np.zeros((20, 20), object), {}, "real numbers"),
        (np.full((20, 20), np.nan), {}, "NaN"),
        (np.zeros((20, 20)), {"tile": 3}, "smaller than f\\^l"),
        (np.zeros((20, 20, 3)), {"channel_axis": 2}, "1 channel"),
        (np.zeros((20, 20)), {"channel_axis": 5}, "channel_axis"),
        (np.zeros((20,)), {}, "spatial axes"),
        (np.zeros((20, 20)), {"mode": "tiled"}, "mode"),
        (np.zeros((20, 20)), {"half": True, "device": "cpu"}, "half precision"),
        (np.zeros((20, 20)), {"batch_size": 0}, "batch_size"),
        (np.zeros((20, 20)), {"device": "banana"}, "unknown device"),
        (np.zeros((20, 20)), {"normalization": "zscore"}, "normalization"),
    ],
)
def test_bad_input_2d_model(image, kwargs, match):
    kwargs = {"device": "cpu", **kwargs}
    with pytest.raises(ShiftSegError, match=match):
        predict_embeddings(image, make_net(2, 2), **kwargs)


def test_bad_input_3d_model_and_channels():
    with pytest.raises(ShiftSegError, match="3D model needs a 3D image"):
        predict_embeddings(np.zeros((20, 20)), make_net(3, 1), device="cpu")
    with pytest.raises(ShiftSegError, match="per_slice"):
        predict_embeddings(np.zeros((4, 20, 20)), make_net(3, 1), per_slice=True, device="cpu")
    with pytest.raises(ShiftSegError, match="expects 2 channels"):
        predict_embeddings(np.zeros((20, 20)), make_net(2, 2, in_channels=2), device="cpu")
    with pytest.raises(TypeError, match="Model or UNet"):
        predict_embeddings(np.zeros((20, 20)), object(), device="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_tile_is_named(bad):
    image = np.zeros((120, 40), np.float32)
    image[110, 5] = bad
    emb = predict_embeddings(image, make_net(2, 2), tile=16, device="cpu", normalization=(0, 1))
    emb[:, :16].compute()  # tiles whose input window misses the bad voxel are fine
    with pytest.raises(ShiftSegError, match=r"window of tile \([4-7], [0-2]\) \(output region \[.*NaN or inf"):
        emb.compute(scheduler="sync")


# ---- devices -----------------------------------------------------------------------------------
def test_resolve_device():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu")).type == "cpu"
    assert devices.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ShiftSegError, match="no CUDA GPU"):
            devices.resolve_device("cuda:0")
    with pytest.raises(TypeError):
        devices.resolve_device(3)


def test_auto_tile_grows_with_budget():
    net = make_net(3, 2, base=4)
    g = net.config.geometry
    small = devices.auto_tile(g, net, "cpu", memory_budget_bytes=50e6)
    large = devices.auto_tile(g, net, "cpu", memory_budget_bytes=2e9)
    assert small % g.grid == 0 and large % g.grid == 0
    assert g.grid <= small < large <= devices.MAX_AUTO_TILE[3]
    assert devices.estimate_tile_memory(g, net, large) <= 2e9
    assert devices.auto_tile(g, net, "cpu", memory_budget_bytes=1) == g.grid
    assert devices.auto_tile(g, Model(net), "cpu") % g.grid == 0  # RAM budget


def test_auto_tile_of_an_anisotropic_net_is_per_axis():
    from napari_shiftseg.network.unet import UNet
    from napari_shiftseg.training.train import network_config

    net = UNet(network_config(3, levels=2, base_channels=2, factors=((1, 2, 2), (2, 2, 2))))
    tile = devices.auto_tile(net.config.geometry, net, "cpu", memory_budget_bytes=200e6)
    grids = net.config.geometry.grids
    assert isinstance(tile, tuple) and all(t % f == 0 for t, f in zip(tile, grids))
    assert len({t // f for t, f in zip(tile, grids)}) == 1  # the same n on every axis


def test_tile_auto_is_resolved_once_for_the_device():
    net = make_net(2, 2)
    image = np.random.default_rng(0).random((60, 70)).astype(np.float32)
    plan = predict_plan(image, net, "auto", device="cpu")
    # Half the free RAM holds a far larger tile than this image: one tile covers it.
    assert plan.n_tiles == 1 and devices.auto_tile(net.config.geometry, net, "cpu") >= 64
    auto = predict_embeddings(image, net, tile="auto", device="cpu").compute()
    np.testing.assert_allclose(auto, predict_whole(image, net, device="cpu"), atol=1e-5)
    with pytest.raises(ShiftSegError, match="'auto'"):
        predict_plan(image, net, "big")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_exact_and_half():
    net = make_net(3, 2, base=4)
    image = np.random.default_rng(7).random((20, 30, 30)).astype(np.float32)
    cpu = predict_whole(image, net, device="cpu")
    gpu = predict_embeddings(image, net, tile=16, device="cuda", batch_size=2).compute()
    assert max_rel(gpu, cpu) < 1e-3  # TF32/cuDNN algorithms differ from the CPU's
    half = predict_embeddings(image, net, tile=16, device="cuda", half=True).compute()
    assert half.dtype == np.float32 and max_rel(half, cpu) < 5e-2
    assert devices.auto_tile(net.config.geometry, net, "cuda") >= net.config.geometry.grid


def test_plan_helper_and_dask_config_untouched():
    net = make_net(2, 3)
    plan = predict_plan(np.zeros((3, 50, 60)), net, tile=21, per_slice=True)
    assert plan.image_shape == (50, 60) and plan.tile == (24, 24)
    assert dask.config.get("optimization.fuse.active", None) is None


@pytest.mark.parametrize("per_slice", [False, True])
def test_blend_matches_a_direct_gaussian_average(per_slice):
    """Reference: run every blend tile on the globally padded image and average by hand."""
    from napari_shiftseg.network.tiling import gaussian_weight, reflect_pad

    net = make_net(2, 2, base=2, seed=3)
    rng = np.random.default_rng(8)
    image = rng.random((2, 23, 30) if per_slice else (23, 30)).astype(np.float32)
    plan = predict_plan(image, net, 12, mode="blend", per_slice=per_slice)
    lazy = predict_embeddings(image, net, 12, mode="blend", device="cpu", normalization=False,
                              per_slice=per_slice, batch_size=2)
    slices = image if per_slice else image[None]
    weight = gaussian_weight(plan.tile)
    for z, plane in enumerate(slices):
        padded = reflect_pad(plane, plan.pad_width)
        acc = np.zeros((4, *plane.shape))
        norm = np.zeros(plane.shape)
        for t in plan:
            with torch.inference_mode():
                raw = net(torch.from_numpy(padded[t.window].copy())[None, None])[0].numpy()
            kept = tuple(slice(c.start - net.config.geometry.crop_front, c.stop - net.config.geometry.crop_front)
                         for c in t.crop)
            acc[(slice(None),) + t.write] += raw[(slice(None),) + t.crop] * weight[kept]
            norm[t.write] += weight[kept]
        out = lazy[:, z] if per_slice else lazy
        np.testing.assert_allclose(out.compute(), acc / norm, rtol=1e-4, atol=1e-6)


def test_tiled_path_uses_the_recorded_normalization():
    """A model trained with other percentiles is normalised with those, tiled or whole."""
    from helpers import tiny_net

    from napari_shiftseg.imaging.normalize import percentile_normalization

    net = tiny_net(base=3, seed=2)
    image = np.random.default_rng(0).gamma(2.0, size=(40, 44)).astype(np.float32)
    model = Model(net, {"normalization": {"method": "percentile", "low": 10.0, "high": 90.0}})
    tiled = predict_embeddings(image, model, tile=8, device="cpu").compute(scheduler="sync")
    want = predict_embeddings(image, net, tile=8, device="cpu",
                              normalization=percentile_normalization(image, 10.0, 90.0)).compute(scheduler="sync")
    default = predict_embeddings(image, net, tile=8, device="cpu").compute(scheduler="sync")
    np.testing.assert_array_equal(tiled, want)
    assert np.abs(tiled - default).max() > 1e-3  # the record made a difference
    np.testing.assert_allclose(predict_whole(image, model, device="cpu"), tiled, atol=1e-5)
    bad = Model(net, {"normalization": {"method": "zscore"}})
    with pytest.raises(ShiftSegError, match="does not know"):
        predict_embeddings(image, bad, tile=8, device="cpu")
