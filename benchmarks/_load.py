"""Busy processes beside a benchmark: the "with N busy processes" half of the load measurements
(bench_threads.py, bench_scaling.py), one implementation."""

from __future__ import annotations

import multiprocessing
import signal
import time
from contextlib import contextmanager


def _spin() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills us
    while True:
        pass


@contextmanager
def busy(n: int):
    """``n`` pure-Python spinning processes while the block runs (none for n = 0); killed when
    it ends, however it ends."""
    context = multiprocessing.get_context("spawn")
    procs = []
    try:
        for _ in range(n):
            proc = context.Process(target=_spin, daemon=True)
            proc.start()
            procs.append(proc)
        if procs:
            time.sleep(2)  # let the scheduler spread them
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join()
