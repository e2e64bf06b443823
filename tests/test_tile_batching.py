"""Automatic tile batching (``batch_size=None``): several tiles per network call, one output
chunk per tile, and still exactly whole-image inference."""

import numpy as np
import pytest
import torch

from napari_shiftseg.inference import predict
from napari_shiftseg.inference.predict import _split_sizes, predict_embeddings, predict_plan, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util import progress
from napari_shiftseg.util.progress import TILE_PREFIX

torch.set_num_threads(1)


def make_net(ndim=3, levels=2, base=2, seed=0, **config):
    torch.manual_seed(seed)
    return UNet(UNetConfig(geometry=UNetGeometry(ndim=ndim, levels=levels), base_channels=base, **config))


class Calls:
    """Batch sizes of the network's calls."""

    def __init__(self, net):
        self.sizes = []
        forward = net.forward

        def counted(x):
            self.sizes.append(int(x.shape[0]))
            return forward(x)

        net.forward = counted


def test_split_sizes_balance_and_cap():
    assert _split_sizes(4, 4) == [4]
    assert _split_sizes(5, 4) == [3, 2]  # never a lone tile when two parts suffice
    assert _split_sizes(4, 3) == [2, 2]
    assert _split_sizes(5, 2) == [2, 2, 1]
    assert _split_sizes(1, 4) == [1]
    for n in range(1, 20):
        for b in range(1, 6):
            sizes = _split_sizes(n, b)
            assert sum(sizes) == n and max(sizes) <= b and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("head", [{}, {"embedding": "spatial", "position_scale": 0.25}])
def test_auto_batches_tiles_keeps_chunks_and_is_exact(head):
    net = make_net(**head)
    calls = Calls(net)
    image = np.random.default_rng(0).random((9, 12, 37), dtype=np.float32)
    whole = predict_whole(image, net, device="cpu", normalization=False)
    one = predict_embeddings(image, net, 8, device="cpu", normalization=False, batch_size=1)
    auto = predict_embeddings(image, net, 8, device="cpu", normalization=False)
    assert auto.chunks == one.chunks  # one chunk per tile, as with one tile per call
    calls.sizes.clear()
    out = auto.compute(scheduler="sync")
    plan = predict_plan(image, net, 8, device="cpu")
    assert sum(calls.sizes) == plan.n_tiles and max(calls.sizes) > 1  # each tile once, in batches
    assert max(calls.sizes) <= predict.AUTO_BATCH_MAX
    np.testing.assert_allclose(out, whole, atol=1e-5)
    np.testing.assert_allclose(out, one.compute(scheduler="sync"), atol=1e-5)


def test_auto_progress_counts_tiles_and_slices_touch_their_batch_only():
    net = make_net()
    image = np.random.default_rng(1).random((17, 9, 40), dtype=np.float32)
    emb = predict_embeddings(image, net, 8, device="cpu", normalization=False)
    plan = predict_plan(image, net, 8, device="cpu")
    seen = []
    progress.compute(emb, progress=lambda done, total: seen.append((done, total)), scheduler="sync")
    assert seen[0] == (0, plan.n_tiles) and seen[-1] == (plan.n_tiles, plan.n_tiles)
    tiles = [k for k in dict(emb.__dask_graph__()) if str(k[0]).startswith(TILE_PREFIX)]
    assert len(tiles) == plan.n_tiles
    calls = Calls(net)
    emb[:, 0, 0, 0].compute(scheduler="sync")  # one voxel: its tile's batch, nothing else
    assert len(calls.sizes) == 1 and 1 < calls.sizes[0] <= predict.AUTO_BATCH_MAX


def test_auto_is_one_tile_per_call_where_not_measured(monkeypatch):
    image3 = np.random.default_rng(2).random((8, 8, 40), dtype=np.float32)
    net = make_net()
    plan = predict_plan(image3, net, 8, device="cpu")
    assert predict._auto_batch(net, plan, torch.device("cpu"), False) > 1
    assert predict._auto_batch(net, plan, torch.device("cuda"), False) == 1  # GPU: unchanged
    blend = predict_plan(image3, net, 8, mode="blend", device="cpu")
    assert predict._auto_batch(net, blend, torch.device("cpu"), False) == 1
    net2 = make_net(ndim=2)
    assert predict._auto_batch(net2, predict_plan(image3[0], net2, 8, device="cpu"),
                               torch.device("cpu"), False) == 1
    # tiles whose calls would not fit the memory cap run one by one
    monkeypatch.setattr(predict, "AUTO_BATCH_BYTES", net.config.forward_bytes(plan.tile, 1))
    assert predict._auto_batch(net, plan, torch.device("cpu"), False) == 1


def test_explicit_batch_size_keeps_its_merged_chunks():
    net = make_net()
    image = np.random.default_rng(3).random((8, 8, 40), dtype=np.float32)
    emb = predict_embeddings(image, net, 8, device="cpu", normalization=False, batch_size=2)
    assert emb.chunks[-1] == (16, 16, 8)
    np.testing.assert_allclose(emb.compute(scheduler="sync"),
                               predict_whole(image, net, device="cpu", normalization=False), atol=1e-5)
