"""The segmentation job on a dask.distributed cluster gives the in-process result exactly."""

import time

import numpy as np
import pytest
import torch

from napari_shiftseg.inference.cluster import connect
from napari_shiftseg.inference.predict import predict_whole
from napari_shiftseg.inference.segment import segment_to_zarr
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import save_model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError

distributed = pytest.importorskip("distributed")

KW = dict(tile=16, device="cpu", bandwidth=1.0, min_size=3, n_seeds=100)


def tiny_model(path, image, seed=0):
    """Random 2-level 2D U-Net with its head rescaled to mean 0, std 1 outputs on ``image``."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4, embed_dim=2)).eval()
    out = predict_whole(image, net, device="cpu").reshape(3, -1)
    mean, std = torch.from_numpy(out.mean(1)), torch.from_numpy(out.std(1))
    with torch.no_grad():
        net.head.weight /= std.view(-1, 1, 1, 1)
        net.head.bias.sub_(mean).div_(std)
    return save_model(net, path)


def _local_run(tmp_path, shape, seed):
    """(image, model path, in-process output) for a random binary image of ``shape``."""
    image = (np.random.default_rng(seed).random(shape) > 0.6).astype(np.float32)
    model = tiny_model(tmp_path / "m.safetensors", image)
    return image, model, segment_to_zarr(image, tmp_path / "local.zarr", model, **KW)


def _loopback_cluster():
    """Two worker processes on 127.0.0.1, no dashboards."""
    return distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                    dashboard_address=None, worker_dashboard_address=None)


def test_local_cluster_matches_in_process(tmp_path):
    image, model, local = _local_run(tmp_path, (40, 48), 0)
    with _loopback_cluster() as cluster, distributed.Client(cluster) as client:
        seen = []
        remote = segment_to_zarr(image, tmp_path / "remote.zarr", model, client=client,
                                 progress=lambda d, t: seen.append((d, t)), **KW)
    assert remote.attrs["complete"] is True and seen[-1] == (9, 9)
    for name in ("embeddings", "foreground", "labels/instances/0"):
        np.testing.assert_array_equal(remote[name][...], local[name][...], err_msg=name)


def test_unreachable_scheduler_fails_fast():
    start = time.monotonic()
    with pytest.raises(ShiftSegError, match="cannot reach the dask scheduler at tcp://127.0.0.1:1"):
        connect("tcp://127.0.0.1:1", timeout=2)
    assert time.monotonic() - start < 15


def test_scheduler_and_workers_are_exclusive():
    with pytest.raises(ShiftSegError, match="not several"):
        connect("tcp://127.0.0.1:1", workers=2)
    assert connect() is None


def test_scheduler_file(tmp_path):
    """--scheduler-file: the JSON a `dask scheduler --scheduler-file` writes (as in a SLURM job)."""
    import json

    with pytest.raises(ShiftSegError, match="scheduler file .* does not exist"):
        connect(scheduler_file=tmp_path / "none.json")
    with distributed.LocalCluster(n_workers=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        path = tmp_path / "scheduler.json"
        path.write_text(json.dumps({"address": cluster.scheduler_address}))
        client = connect(scheduler_file=str(path))
        try:
            assert client.scheduler.address == cluster.scheduler_address
            assert client.submit(sum, [1, 2]).result() == 3
        finally:
            client.close()


def test_local_cluster_listens_on_loopback_only():
    """issue 9, defect 11: ``--workers N`` binds scheduler and workers to 127.0.0.1, no dashboard."""
    client = connect(workers=1)
    cluster = client.cluster
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        info = client.scheduler_info()
        assert info["workers"] and all(a.startswith("tcp://127.0.0.1:") for a in info["workers"])
        # every listening socket of this process and its workers (HTTP servers included)
        import psutil

        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = [c.laddr.ip for p in procs for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and set(listening) == {"127.0.0.1"}, listening
    finally:
        client.close()
        cluster.close()


def test_tiles_run_with_the_thread_count_of_the_graph_builder():
    """A worker with another torch thread count computes bit-identical embeddings (3D, where
    oneDNN's algorithm choice by thread count changes the rounding)."""
    from napari_shiftseg.inference.predict import predict_embeddings
    from napari_shiftseg.network.modelio import load_bundled

    model = load_bundled(3, kind="disks")
    image = np.random.default_rng(0).random((36, 36, 36)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        reference = predict_embeddings(image, model, tile=36, device="cpu").compute(scheduler="sync")
        lazy = predict_embeddings(image, model, tile=36, device="cpu")
        torch.set_num_threads(1)  # what a dask worker with one thread has
        np.testing.assert_array_equal(lazy.compute(scheduler="sync"), reference)
    finally:
        torch.set_num_threads(before)


def _gpu_cpu_cluster():
    """A loopback scheduler with one worker process declaring a GPU and one that does not."""
    from distributed import Nanny, Scheduler, SpecCluster

    common = {"nthreads": 1, "host": "127.0.0.1", "dashboard_address": None}
    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}},
        workers={"gpu": {"cls": Nanny, "options": {**common, "resources": {"GPU": 1}}},
                 "cpu": {"cls": Nanny, "options": common}},
        asynchronous=False)


def test_tiles_run_on_workers_with_the_tile_resources(tmp_path):
    """Tile tasks carry {"GPU": 1}: they run on the worker declaring it, the labels equal an
    in-process run; a cluster without such a worker is refused before anything is written."""
    image, model, local = _local_run(tmp_path, (40, 48), 0)
    with _gpu_cpu_cluster() as cluster, distributed.Client(cluster) as client:
        gpu = next(a for a, w in client.scheduler_info()["workers"].items() if w.get("resources"))
        with distributed.get_task_stream(client) as stream:
            remote = segment_to_zarr(image, tmp_path / "remote.zarr", model, client=client,
                                     tile_resources={"GPU": 1}, **KW)
        tiles = [t for t in stream.data if "write_tile" in str(t["key"]) or "shiftseg-tiles" in str(t["key"])]
        assert tiles and {t["worker"] for t in tiles} == {gpu}
        with pytest.raises(ShiftSegError, match="no worker of the cluster declares the tile resources TPU=1"):
            segment_to_zarr(image, tmp_path / "none.zarr", model, client=client, tile_resources={"TPU": 1}, **KW)
    assert not (tmp_path / "none.zarr").exists()
    np.testing.assert_array_equal(remote["labels/instances/0"][...], local["labels/instances/0"][...])
    np.testing.assert_array_equal(remote["embeddings"][...], local["embeddings"][...])


def test_losing_a_worker_mid_run_loses_and_duplicates_nothing(tmp_path):
    import os

    image, model, local = _local_run(tmp_path, (96, 96), 1)
    with _loopback_cluster() as cluster, distributed.Client(cluster) as client:
        import signal

        victim = sorted(client.run(os.getpid).values())[0]  # a worker process (its nanny restarts it)
        killed = []

        def progress(done, total):
            if done >= 2 and not killed:  # some tiles are written, most are not
                killed.append(done)
                os.kill(victim, signal.SIGKILL)

        remote = segment_to_zarr(image, tmp_path / "remote.zarr", model, client=client,
                                 progress=progress, **KW)
    assert killed and killed[0] < 36
    assert remote.attrs["complete"] is True
    for name in ("embeddings", "foreground", "labels/instances/0"):
        np.testing.assert_array_equal(remote[name][...], local[name][...], err_msg=name)
