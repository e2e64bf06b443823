"""Thread counts that degrade gracefully on a shared machine.

Two things make torch slow when the CPUs are shared with other busy processes:

- **OpenMP busy-waiting.** Between parallel regions, OpenMP threads spin for a while before
  they sleep (libgomp: ~300k spins by default). On a loaded machine a spinning thread burns
  the time slice that the thread it waits for needs. ``OMP_WAIT_POLICY=PASSIVE`` makes them
  sleep (GNU OpenMP after a spin of ~0.1 ms, ``GOMP_SPINCOUNT``). The OpenMP runtime reads
  these once, when it loads (with torch), so :func:`set_env_defaults` runs at the top of the
  package (``napari_shiftseg/__init__.py``), before any submodule imports torch. A user's
  own setting wins.
- **More threads than free cores.** Every parallel region waits for its slowest thread; with
  more runnable threads than cores, one of ours is often descheduled and the others wait.
  :func:`choose_threads` takes no more threads than the CPUs this process may use (affinity,
  cgroup quota) and, unless a count is asked for (``--threads``, ``OMP_NUM_THREADS``), no more
  than the cores that are free now (processes runnable at this instant). See
  ``docs/THREADS.md`` and ``benchmarks/bench_threads.py``.

This module imports nothing heavy (no torch): the package root imports it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import MutableMapping

__all__ = ["ENV_DEFAULTS", "WAIT_VARIABLES", "set_env_defaults", "usable_cpus", "current_load",
           "free_cpus", "choose_threads", "threads_per_worker"]

#: Set in the environment before torch loads, unless the user set any of :data:`WAIT_VARIABLES`.
#: PASSIVE: idle OpenMP threads sleep (GNU and Intel OpenMP alike). GOMP_SPINCOUNT (GNU OpenMP,
#: torch's wheels): they first spin about 0.1 ms instead of the default ~3 ms; measured on 2
#: cores, idle, 2 threads: 0.103 s/step (median) against 0.140 with no spin at all and 0.115
#: with the default spin; under 4 busy processes a 3 ms spin costs 3-20x, this one ~1.2x
#: (benchmarks/bench_threads.py; docs/THREADS.md).
ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
#: How OpenMP threads wait: a user who set one of these gets exactly what they set (for GNU
#: OpenMP, GOMP_SPINCOUNT overrides the spin of OMP_WAIT_POLICY; an explicit KMP_BLOCKTIME
#: overrides it for Intel's). KMP_BLOCKTIME itself is not set: Intel's OpenMP does not spin
#: under OMP_WAIT_POLICY=PASSIVE.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def set_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`ENV_DEFAULTS` into ``environ`` (default ``os.environ``) unless one of
    :data:`WAIT_VARIABLES` is set there already.

    Only effective before torch (its OpenMP runtime) is first imported in the process.
    Returns the variables it set.
    """
    env = os.environ if environ is None else environ
    if any(key in env for key in WAIT_VARIABLES):
        return {}
    env.update(ENV_DEFAULTS)
    return dict(ENV_DEFAULTS)


def _cgroup_cpus() -> int | None:
    """CPUs allowed by a cgroup CPU quota (containers, SLURM ``--cpus-per-task``), or None."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, SLURM, dask worker
    pinning), capped by a cgroup CPU quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _runnable() -> int | None:
    """Processes (threads) runnable on the machine at this instant, less the reader."""
    try:
        with open("/proc/loadavg") as f:
            return max(0, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None


def current_load(samples: int = 5, interval: float = 0.02) -> float | None:
    """Runnable work on the machine now: the mean of ``samples`` counts of the runnable
    processes, ``interval`` seconds apart (``/proc/loadavg``, less this process), else the
    1-minute load average. None where neither is available.

    Not the load average where the instant count exists: it lags a change by about a minute
    (measured: 8 for a minute after 4 busy processes stopped, and 1 thread chosen on idle
    cores, 0.16-0.19 s/step where 2 threads ran at 0.11-0.12; benchmarks/bench_threads.py).
    """
    counts = []
    for i in range(max(1, samples)):
        if i:
            time.sleep(interval)
        count = _runnable()
        if count is None:
            break
        counts.append(count)
    if counts:
        return sum(counts) / len(counts)
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not available (Windows)
        return None


def free_cpus(cpus: int | None = None, load: float | None = None) -> float:
    """Cores of ours that other work leaves free: ``cpus`` (default :func:`usable_cpus`) less
    their share of ``load`` (default :func:`current_load`).

    The load counts runnable processes on all online CPUs; it is assumed spread evenly over
    them. Never below 0; the whole of ``cpus`` where the load is unknown.
    """
    cpus = usable_cpus() if cpus is None else cpus
    if load is None:
        load = current_load()
        if load is None:
            return float(cpus)
    online = max(os.cpu_count() or cpus, cpus)
    return max(0.0, cpus - load * cpus / online)


def _env_threads(environ=None) -> int | None:
    """The thread count a user set in ``OMP_NUM_THREADS`` (its first value), or None."""
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    try:
        threads = int(value.split(",")[0])
    except ValueError:
        return None
    return threads if threads > 0 else None


def choose_threads(requested: int | None = None, *, load: float | None = None,
                   cpus: int | None = None) -> int:
    """torch intra-op threads for this process.

    ``requested`` (``--threads``), else a count set in ``OMP_NUM_THREADS``, is honoured up to
    the usable CPUs (more threads than CPUs only wait for each other). Without either: the
    usable CPUs (:func:`usable_cpus`), but no more than the cores free now (:func:`free_cpus`
    of ``load``, default :func:`current_load`; rounded to the nearest core). Always at least
    1. ``load`` and ``cpus`` replace the measured values (tests, benchmarks).
    """
    cpus = usable_cpus() if cpus is None else max(1, int(cpus))
    if requested is None:
        requested = _env_threads()
    if requested is not None:
        return max(1, min(int(requested), cpus))
    free = free_cpus(cpus, load)
    return max(1, min(cpus, math.floor(free + 0.5)))


def threads_per_worker(n_workers: int, cpus: int | None = None) -> int:
    """torch threads for each of ``n_workers`` concurrent workers (dask worker processes, or
    threads of a local pool) so that workers x threads never exceed the usable CPUs; at
    least 1 (more workers than CPUs then run one thread each)."""
    cpus = usable_cpus() if cpus is None else max(1, int(cpus))
    return max(1, cpus // max(1, int(n_workers)))
