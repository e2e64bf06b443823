"""The SLURM recipe of docs/CLUSTER.md (scripts/jobqueue_cluster.py), as far as a machine
without SLURM allows: the job scripts dask-jobqueue generates. (The same resources on a
loopback cluster: tests/test_distributed.py::test_tiles_run_on_workers_with_the_tile_resources.)"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("dask_jobqueue")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import jobqueue_cluster  # noqa: E402


@pytest.mark.parametrize("kind, directive", [("slurm", "#SBATCH"), ("pbs", "#PBS"), ("lsf", "#BSUB")])
def test_gpu_and_cpu_job_scripts(kind, directive):
    gpu_directives = ("--gres=gpu:1",) if kind == "slurm" else ()
    cluster = jobqueue_cluster.gpu_cluster(kind, cores=4, memory="16GB", host="127.0.0.1",
                                           gpu_directives=gpu_directives)
    try:
        gpu = cluster.job_script()
        cpu = jobqueue_cluster.cpu_job_script(cluster, cores=8, memory="32GB")
        address = cluster.scheduler_address
    finally:
        cluster.close()
    assert address.startswith("tcp://127.0.0.1:")
    for script in (gpu, cpu):
        assert directive in script and address in script  # both join the one scheduler
    assert "--resources GPU=1" in gpu and "--resources" not in cpu
    assert "--nworkers" not in gpu and "--nworkers 8" in cpu  # one process per GPU; 8 CPU workers
    if kind == "slurm":
        assert "#SBATCH --gres=gpu:1" in gpu and "--gres" not in cpu
