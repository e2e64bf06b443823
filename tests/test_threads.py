"""Thread counts that degrade gracefully (napari_shiftseg.util.threads); no timings asserted."""

import os
import subprocess
import sys

import pytest
import torch

import napari_shiftseg.training.train as ntrain
from napari_shiftseg.cli import main
from napari_shiftseg.util import threads


@pytest.fixture
def cpus(monkeypatch):
    """``cpus(n)``: this process may use n CPUs (affinity), no cgroup quota, no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: None)

    def set_cpus(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return set_cpus


def test_choose_threads_respects_a_request_up_to_the_cpus(cpus):
    cpus(4)
    assert threads.choose_threads(1) == 1
    assert threads.choose_threads(3) == 3
    assert threads.choose_threads(4, load=100.0) == 4  # asked for: the load does not cut it
    assert threads.choose_threads(64) == 4  # never more than the CPUs
    assert threads.choose_threads(2, cpus=1) == 1


def test_choose_threads_follows_the_affinity(cpus):
    cpus(1)
    assert threads.usable_cpus() == 1
    assert threads.choose_threads(load=0.0) == 1
    assert threads.choose_threads(8) == 1
    cpus(3)
    assert threads.usable_cpus() == 3


def test_cgroup_quota_caps_the_cpus(cpus, monkeypatch):
    cpus(8)
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 2)
    assert threads.usable_cpus() == 2
    assert threads.choose_threads(load=0.0) == 2


def test_choose_threads_leaves_busy_cores(cpus, monkeypatch):
    cpus(2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads.choose_threads(load=0.0) == 2
    assert threads.choose_threads(load=0.4) == 2
    assert threads.choose_threads(load=1.0) == 1
    assert threads.choose_threads(load=4.0) == 1  # 4 busy processes on 2 cores
    # the load is spread over all online CPUs: 8 runnable on 16 CPUs leave half of ours free
    cpus(4)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert threads.free_cpus(load=8.0) == pytest.approx(2.0)
    assert threads.choose_threads(load=8.0) == 2


@pytest.mark.parametrize("requested", [None, 0, -3, 1])
@pytest.mark.parametrize("load", [0.0, 1e9])
def test_choose_threads_never_below_one(cpus, requested, load):
    cpus(1)
    assert threads.choose_threads(requested, load=load) == 1
    assert threads.choose_threads(requested, load=load, cpus=0) == 1


def test_omp_num_threads_counts_as_a_request(cpus, monkeypatch):
    cpus(4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(load=100.0) == 3
    assert threads.choose_threads(2) == 2  # --threads wins over the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "8,2")  # nested levels: the first one
    assert threads.choose_threads() == 4
    for junk in ("", "abc", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", junk)
        assert threads.choose_threads(load=0.0) == 4


def test_the_measured_load_gives_a_valid_count(cpus):
    cpus(2)
    load = threads.current_load()
    assert load is None or load >= 0
    assert 1 <= threads.choose_threads() <= 2


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_workers_times_threads_never_exceed_the_cores(workers, n):
    per_worker = threads.threads_per_worker(workers, cpus=n)
    assert per_worker >= 1
    if workers <= n:
        assert workers * per_worker <= n
    else:
        assert per_worker == 1


def test_set_env_defaults_keeps_the_users_value():
    env = {"PATH": "/bin"}
    assert threads.set_env_defaults(env) == threads.ENV_DEFAULTS
    assert env == {"PATH": "/bin", **threads.ENV_DEFAULTS}
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    # a user who set how threads wait gets exactly that (GOMP_SPINCOUNT would override their policy)
    for key, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "0"), ("KMP_BLOCKTIME", "200")]:
        env = {key: value}
        assert threads.set_env_defaults(env) == {}
        assert env == {key: value}


def _fresh(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in (*threads.WAIT_VARIABLES, "OMP_DISPLAY_ENV")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.strip(), out.stderr


def test_the_package_sets_the_wait_policy_before_torch_loads():
    out, _ = _fresh("import sys, os; import napari_shiftseg; print(os.environ.get('OMP_WAIT_POLICY'), "
                    "os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    assert out == "PASSIVE 10000 False"  # set, and torch is not loaded yet
    out, _ = _fresh("import napari_shiftseg, os; print(os.environ.get('OMP_WAIT_POLICY'))",
                    OMP_WAIT_POLICY="ACTIVE")
    assert out == "ACTIVE"
    out, _ = _fresh("import napari_shiftseg, os; print(os.environ.get('OMP_WAIT_POLICY'), "
                    "os.environ.get('GOMP_SPINCOUNT'))", GOMP_SPINCOUNT="0")
    assert out == "None 0"


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_the_openmp_runtime_sees_the_wait_policy(user):
    """libgomp prints the settings it read when it loaded (OMP_DISPLAY_ENV): importing a module
    that loads torch shows the package's default, or the user's own value."""
    env = {"OMP_DISPLAY_ENV": "VERBOSE", **({"OMP_WAIT_POLICY": user} if user else {})}
    out, err = _fresh("import sys, napari_shiftseg.training.train; print('torch' in sys.modules)", **env)
    assert out == "True"
    if "OPENMP DISPLAY ENVIRONMENT" not in err:
        pytest.skip("this torch's OpenMP runtime does not display its environment")
    assert f"OMP_WAIT_POLICY = '{user or 'PASSIVE'}'" in err
    if "GOMP_SPINCOUNT" in err:  # shown with OMP_DISPLAY_ENV=VERBOSE only
        assert f"GOMP_SPINCOUNT = '{'30000000000' if user else '10000'}'" in err


@pytest.mark.parametrize("asked, usable, want", [("1", 4, 1), ("3", 2, 2), (None, 1, 1)])
def test_cli_train_runs_with_the_chosen_threads(tmp_path, monkeypatch, cpus, asked, usable, want):
    cpus(usable)
    seen = []
    train = ntrain.train

    def spy(*args, progress=None, **kwargs):
        def wrapped(step, parts):
            seen.append(torch.get_num_threads())
            if progress is not None:
                progress(step, parts)
        return train(*args, progress=wrapped, **kwargs)

    monkeypatch.setattr(ntrain, "train", spy)
    before = torch.get_num_threads()
    argv = ["train", "--synthetic", "random", "--n-objects", "6", "--radius", "4", "--levels", "2",
            "--base-channels", "4", "--window", "12", "--steps", "2", "--validation", "0", "--quiet",
            *(["--threads", asked] if asked else []), "-o", str(tmp_path / "m.safetensors")]
    assert main(argv) == 0
    assert seen == [want, want]
    assert torch.get_num_threads() == before  # restored after training


def test_local_tiles_never_take_more_threads_than_the_cpus(monkeypatch):
    """dask's local threads x torch threads per tile stay within the usable CPUs (issue 27),
    and the caller's thread count comes back after the run."""
    import dask.system
    import torch

    from napari_shiftseg.inference import cluster
    from napari_shiftseg.util import threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        monkeypatch.setattr(dask.system, "CPU_COUNT", 4)
        with cluster.tile_threads(None):
            assert torch.get_num_threads() == 1
        monkeypatch.setattr(dask.system, "CPU_COUNT", 2)
        with cluster.tile_threads(None):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
