"""Compute dask arrays with per-tile progress and cancellation.

Used by the CLI (a tqdm bar as ``progress``) and by the napari widgets (``thread_worker``
with a ``threading.Event`` for the Cancel button). The core never prints: progress comes in
through a callback.

With the local schedulers a :class:`dask.callbacks.Callback` counts finished tile tasks (keys
named ``shiftseg-tiles-…``; every task if the graph has none) and raises :class:`Cancelled`
from ``pretask`` once the event is set, so no further task starts and nothing partial is
returned. With a ``distributed.Client`` the arrays are persisted, their chunk futures are
watched with ``as_completed``, and cancelling cancels the futures.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import dask
from dask.callbacks import Callback

#: Key prefix of the graph layer that runs the network (one task per tile or tile batch).
TILE_PREFIX = "shiftseg-tiles-"

ProgressFn = Callable[[int, int], None]


class Cancelled(Exception):
    """The computation was cancelled by the user; no result is returned."""


def _key_name(key) -> str:
    name = key[0] if isinstance(key, tuple) else key
    return name if isinstance(name, str) else str(name)


class _ProgressCallback(Callback):
    def __init__(self, progress: ProgressFn | None, cancel: threading.Event | None):
        super().__init__()
        self.progress = progress
        self.cancel = cancel
        self.counted: set | None = None
        self.total = 0
        self.done = 0

    def _start_state(self, dsk, state):
        tiles = {k for k in dsk if _key_name(k).startswith(TILE_PREFIX)}
        self.counted = tiles or None  # None: count every task
        self.total = len(tiles) if tiles else len(dsk)
        self.done = 0
        if self.progress is not None:
            self.progress(0, self.total)

    def _pretask(self, key, dsk, state):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("computation cancelled")

    def _posttask(self, key, result, dsk, state, worker_id):
        if self.counted is None or key in self.counted:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)


def _client_of(scheduler):
    """The distributed Client behind ``scheduler``, or None for local schedulers."""
    if isinstance(scheduler, str) and scheduler not in ("distributed", "dask.distributed"):
        return None
    if "distributed" not in sys.modules:
        # nobody imported distributed, so no Client can exist (and the import costs ~1 s)
        if scheduler is None:
            return None
        if isinstance(scheduler, str):
            raise ValueError("scheduler='distributed' needs a running distributed.Client")
    from distributed import Client, default_client

    if isinstance(scheduler, Client):
        return scheduler
    if scheduler is None or isinstance(scheduler, str):
        try:
            return default_client()
        except ValueError:  # no client running: the local scheduler
            if scheduler is None:
                return None
            raise
    return None


def _compute_distributed(client, arrays, progress, cancel, poll):
    from distributed import as_completed, futures_of

    persisted = client.persist(list(arrays))
    futures = futures_of(persisted)
    total = len(futures)
    if progress is not None:
        progress(0, total)
    done = 0
    queue = as_completed(futures)
    try:
        while not queue.is_empty():
            if cancel is not None and cancel.is_set():
                raise Cancelled("computation cancelled")
            if not queue.has_ready():
                time.sleep(poll)
                continue
            for future in queue.next_batch(block=False):
                if future.status == "error":
                    future.result()  # re-raises the task's exception here
                done += 1
                if progress is not None:
                    progress(done, total)
                if cancel is not None and cancel.is_set():
                    raise Cancelled("computation cancelled")
        return tuple(client.gather(client.compute(persisted)))
    except BaseException:
        client.cancel(futures)
        raise


#: Serialises in-process computes (see :func:`compute`); re-entrant for nested calls.
_LOCAL_COMPUTE = threading.RLock()


def compute(*arrays, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            scheduler=None):
    """Compute dask ``arrays`` like :func:`dask.compute`, reporting progress and honouring cancel.

    Parameters
    ----------
    *arrays : dask collections
    progress : callable(done, total), optional
        Called with the number of finished tile tasks (all tasks if there are none) and the
        total, starting with ``(0, total)``.
    cancel : threading.Event, optional
        Once set, no new task starts and :class:`Cancelled` is raised.
    scheduler : str or distributed.Client, optional
        Any dask scheduler; a ``Client`` (or ``"distributed"``, or a default client) switches
        to futures.

    Returns
    -------
    tuple
        One computed result per array.

    Raises
    ------
    Cancelled
        When ``cancel`` was set; nothing partial is returned.
    """
    if cancel is not None and cancel.is_set():
        raise Cancelled("computation cancelled before it started")
    client = _client_of(scheduler)
    if client is not None:
        return _compute_distributed(client, arrays, progress, cancel, poll=0.05)
    callback = _ProgressCallback(progress, cancel)
    # Linear fusion would merge tile tasks into their consumers and rename them, so tiles
    # could no longer be counted; it saves nothing measurable next to a U-Net forward pass.
    # Both the config and dask's callbacks are process-wide: two threads computing at once
    # (the Segment widget's warm-up beside a run) would count each other's tasks and could
    # restore each other's config out of order, leaving fusion off for good. One at a time.
    with _LOCAL_COMPUTE, dask.config.set({"optimization.fuse.active": False}), callback:
        return dask.compute(*arrays, scheduler=scheduler)
