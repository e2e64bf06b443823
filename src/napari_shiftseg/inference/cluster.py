"""Where the tiles of a run are computed: in this process, on a local cluster or on a
``dask.distributed`` cluster of many machines, and how many torch threads each tile takes.

:func:`connect` gives the ``distributed.Client`` the CLI's ``--scheduler``, ``--scheduler-file``
and ``--workers`` ask for (loopback only, no dashboards, for a local cluster); :func:`runner`
computes dask collections on it (or on a local thread pool that is drained before returning,
also after a cancel); :func:`tile_threads` keeps tiles × torch threads within the CPUs
(docs/THREADS.md); :func:`check_resources` refuses tile resources no worker has. Used by
:mod:`.segment` (the zarr runs, also those of a time series) and the CLI.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from ..util._errors import ShiftSegError, _first_line

__all__ = ["connect", "runner", "tile_threads", "check_resources", "SCHEDULER_FILE_LIMIT"]


@contextlib.contextmanager
def tile_threads(client):
    """torch threads per tile such that the tiles running at once (dask's local threads, or
    a local cluster's workers) times torch's threads never exceed the CPUs (docs/THREADS.md):
    two tiles of two threads each on two cores made every step wait. The tile graph records
    the count (predict.py), so each tile runs with it wherever it runs. A remote cluster's
    machines are not known here: their count stays the caller's."""
    import torch

    from ..util.threads import threads_per_worker

    if client is None:
        from dask.system import CPU_COUNT

        parallel: int | None = max(1, CPU_COUNT)
    else:
        from distributed import LocalCluster

        local = isinstance(getattr(client, "cluster", None), LocalCluster)
        parallel = len(client.scheduler_info().get("workers", {})) if local else None
    before = torch.get_num_threads()
    if parallel:
        torch.set_num_threads(min(before, threads_per_worker(parallel)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runner(client, cancel):
    """``compute(*collections, progress=None)`` on the chosen scheduler, honouring cancel.

    Locally each call gets its own thread pool and waits for it to drain even when a task fails
    or ``cancel`` is set: dask's threaded scheduler raises at once while the tasks already
    running go on writing, and a caller that resumes (or inspects the output) right after an
    interruption must not race with them.
    """
    from ..util import progress as _progress

    def compute(*collections, progress=None):
        if client is not None:
            return _progress.compute(*collections, progress=progress, cancel=cancel, scheduler=client)
        import dask.threaded
        from dask.system import CPU_COUNT

        pool = ThreadPoolExecutor(max(1, CPU_COUNT))
        try:
            return _progress.compute(*collections, progress=progress, cancel=cancel,
                                     scheduler=partial(dask.threaded.get, pool=pool))
        finally:
            pool.shutdown(wait=True)

    return compute


def connect(scheduler: str | None = None, workers: int | None = None, timeout: float = 5.0,
            scheduler_file: str | None = None):
    """A ``distributed.Client`` for ``scheduler`` (an address), ``scheduler_file`` (the JSON file
    ``dask scheduler --scheduler-file`` writes, as on SLURM/PBS clusters) or a new local cluster
    of ``workers``.

    Raises
    ------
    ShiftSegError
        When the scheduler cannot be reached within ``timeout`` seconds.
    """
    from distributed import Client, LocalCluster

    if sum(bool(v) for v in (scheduler, workers, scheduler_file)) > 1:
        raise ShiftSegError("give one of a scheduler address, a scheduler file or a number of "
                            "workers, not several")
    if scheduler_file:
        path = Path(scheduler_file).expanduser()
        address = _scheduler_address(path)
        try:
            return Client(address, timeout=f"{timeout}s")
        except (OSError, TimeoutError, ValueError, KeyError) as err:
            raise ShiftSegError(f"cannot reach the dask scheduler named in {path} "
                                f"({_first_line(err)})") from None
    if scheduler:
        try:
            return Client(scheduler, timeout=f"{timeout}s")
        except (OSError, TimeoutError, ValueError) as err:
            raise ShiftSegError(f"cannot reach the dask scheduler at {scheduler} ({_first_line(err)})") from None
    if workers:
        _check_workers(int(workers))
        # Loopback only, and no dashboards: a local cluster must not listen on other interfaces.
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               worker_dashboard_address=None)
        return Client(cluster)
    return None


#: A scheduler file is a few hundred bytes of JSON; anything far larger is not one.
SCHEDULER_FILE_LIMIT = 1 << 20


def _scheduler_address(path: Path) -> str:
    """The scheduler address recorded in a ``dask scheduler --scheduler-file`` JSON file, read
    here (bounded, plain files only) so that a wrong file is one line, not a traceback."""
    if not path.is_file():
        raise ShiftSegError(f"scheduler file {path} does not exist or is not a plain file (start "
                            f"the scheduler with `dask scheduler --scheduler-file {path}` first)")
    if path.stat().st_size > SCHEDULER_FILE_LIMIT:
        raise ShiftSegError(f"{path} is {path.stat().st_size} bytes: not a dask scheduler file "
                            "(those are a few hundred bytes of JSON)")
    try:
        info = json.loads(path.read_bytes()[:SCHEDULER_FILE_LIMIT])
    except (ValueError, UnicodeDecodeError, RecursionError):  # junk, or nesting too deep
        info = None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise ShiftSegError(f"{path} is not a dask scheduler file (JSON with an \"address\" such "
                            "as \"tcp://10.0.0.5:8786\"); give the file `dask scheduler "
                            "--scheduler-file` wrote")
    return address


def _check_workers(workers: int) -> None:
    """A local cluster shares this machine's CPUs: more worker processes than the CPUs this
    process may use only compete for them (and each loads torch and a model)."""
    from ..util.threads import usable_cpus

    cpus = usable_cpus()
    if workers > cpus:
        raise ShiftSegError(f"--workers {workers} is more than the {cpus} CPUs this process may "
                            f"use: give at most {cpus} (a cluster of many machines is reached "
                            "with --scheduler or --scheduler-file)")


def check_resources(resources, client) -> None:
    """Refuse tile resources no worker declares (the tiles would wait forever)."""
    if not resources:
        return
    if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and v > 0 for k, v in resources.items()):
        raise ShiftSegError(f"tile resources must be names with positive amounts, e.g. GPU=1, got {resources!r}")
    if client is None:
        raise ShiftSegError("tile resources place tiles on a cluster's workers: give a scheduler")
    workers = client.scheduler_info().get("workers", {}).values()
    able = [w for w in workers if all((w.get("resources") or {}).get(k, 0) >= v for k, v in resources.items())]
    if not able:
        wanted = ",".join(f"{k}={v:g}" for k, v in resources.items())
        raise ShiftSegError(f"no worker of the cluster declares the tile resources {wanted}; start "
                            f"GPU workers with `dask worker ... --resources {wanted}`")
