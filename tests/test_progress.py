"""Progress and cancellation for dask computations (local schedulers and distributed)."""

import threading
import time

import dask.array as da
import numpy as np
import pytest
import torch

from napari_shiftseg.inference.predict import predict_embeddings
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util.progress import Cancelled, compute

torch.set_num_threads(1)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2))
    calls = []
    forward = net.forward

    def counted(x):
        calls.append(x.shape[0])
        return forward(x)

    net.forward = counted
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    emb = predict_embeddings(image, net, tile=8, device="cpu")
    return emb, calls


@pytest.mark.parametrize("scheduler", [None, "sync", "threads"])
def test_progress_counts_tiles(setup, scheduler):
    emb, _ = setup
    seen = []
    (out,) = compute(emb, progress=lambda done, total: seen.append((done, total)), scheduler=scheduler)
    assert seen[0] == (0, 25) and seen[-1] == (25, 25)
    assert [d for d, _ in seen] == list(range(26))
    np.testing.assert_array_equal(out, emb.compute())


def test_progress_of_a_slice_counts_only_its_tiles(setup):
    emb, calls = setup
    seen = []
    a, b = compute(emb[:, :8], emb[0, 30], progress=lambda d, t: seen.append((d, t)))
    assert a.shape == (4, 8, 40) and b.shape == (40,)
    assert seen[-1] == (10, 10) and len(calls) == 10


def test_plain_dask_counts_every_task():
    seen = []
    x = da.ones((10, 10), chunks=5) + 1
    (out,) = compute(x, progress=lambda d, t: seen.append((d, t)))
    assert out.sum() == 200 and seen[-1][0] == seen[-1][1] > 0


def test_cancel_before_start(setup):
    emb, calls = setup
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        compute(emb, cancel=event, progress=lambda d, t: pytest.fail("must not start"))
    assert calls == []


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_cancel_stops_early(setup, scheduler):
    emb, calls = setup
    event = threading.Event()

    def progress(done, total):
        if done == 3:
            event.set()

    with pytest.raises(Cancelled):
        compute(emb, progress=progress, cancel=event, scheduler=scheduler)
    assert 3 <= len(calls) < 25


def test_distributed_progress_and_cancel(setup):
    distributed = pytest.importorskip("distributed")
    emb, _ = setup
    expected = emb.compute(scheduler="sync")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        seen = []
        (out,) = compute(emb, progress=lambda d, t: seen.append((d, t)), scheduler=client)
        np.testing.assert_array_equal(out, expected)
        assert seen[0] == (0, 25) and seen[-1] == (25, 25)
        # the network travels as one task: one key for the weights
        assert sum(str(k).startswith("shiftseg-net-") for k in emb.__dask_graph__()) == 1

        event = threading.Event()
        with pytest.raises(Cancelled):
            compute(emb, progress=lambda d, t: event.set() if d >= 1 else None, cancel=event,
                    scheduler=client)


def test_computes_in_two_threads_count_their_own_tasks_and_leave_dask_config_alone():
    """The Segment widget's warm-up computes beside a run: neither may see the other's tasks,
    and dask's process-wide config must end as it began."""
    import dask

    before = dask.config.get("optimization.fuse.active", None)
    totals = {}

    def run(name, n):
        def slow(block):
            time.sleep(0.01)
            return block + 1

        array = da.zeros((n * 4,), chunks=4).map_blocks(slow)
        seen = []
        compute(array, progress=lambda done, total: seen.append(total), scheduler="threads")
        totals[name] = max(seen)

    threads = [threading.Thread(target=run, args=(name, n)) for name, n in (("a", 5), ("b", 30))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert totals["a"] < totals["b"] and totals["a"] <= 2 * 5 + 2, totals
    assert dask.config.get("optimization.fuse.active", None) == before
