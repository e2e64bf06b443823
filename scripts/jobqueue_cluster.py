"""A SLURM (or PBS, LSF) cluster for ``shiftseg segment``: GPU jobs for the network tiles, CPU
jobs for the clustering, with dask-jobqueue (``pip install "napari-shiftseg[cluster]"``).
docs/CLUSTER.md explains it; ``tests/test_jobqueue.py`` checks the job scripts it generates.

    python scripts/jobqueue_cluster.py IMAGE -o OUT.zarr --gpu-jobs 4 --cpu-jobs 8 \\
        --job-extra=--account=lab --tile 64,256,256
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

KINDS = {"slurm": "sbatch", "pbs": "qsub", "lsf": "bsub"}


def _cls(kind: str):
    import dask_jobqueue

    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
            "lsf": dask_jobqueue.LSFCluster}[kind]


def gpu_cluster(kind: str = "slurm", *, cores: int = 4, memory: str = "32GB",
                walltime: str = "04:00:00", gpu_directives=("--gres=gpu:1",), extra_directives=(),
                host: str | None = None):
    """The cluster (and its scheduler) whose jobs are GPU workers declaring ``GPU=1``: one
    worker process per job, so one network per GPU. ``segment --tile-resources GPU=1`` runs
    its tiles only there."""
    options = {"dashboard": False, **({"host": host} if host else {})}
    return _cls(kind)(cores=cores, memory=memory, processes=1, walltime=walltime,
                      job_extra_directives=[*extra_directives, *gpu_directives],
                      worker_extra_args=["--resources", "GPU=1"], scheduler_options=options)


def cpu_job_script(cluster, *, cores: int = 8, memory: str = "32GB", walltime: str = "04:00:00",
                   extra_directives=()) -> str:
    """A batch script of CPU-only workers that join ``cluster``'s scheduler (no GPU resource:
    they take the clustering and labelling). Submit it as often as you want CPU jobs."""
    job = cluster.job_cls(scheduler=cluster.scheduler_address, name="shiftseg-cpu", cores=cores,
                          memory=memory, processes=cores, walltime=walltime,
                          job_extra_directives=list(extra_directives))
    return job.job_script()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--kind", choices=list(KINDS), default="slurm")
    p.add_argument("--gpu-jobs", type=int, default=2)
    p.add_argument("--cpu-jobs", type=int, default=4)
    p.add_argument("--tile", default="64,256,256")
    p.add_argument("--job-extra", action="append", default=[], help="e.g. --job-extra=--account=lab")
    args = p.parse_args(argv)

    from distributed import Client

    from napari_shiftseg.cli import main as shiftseg

    cluster = gpu_cluster(args.kind, extra_directives=args.job_extra)
    cluster.scale(jobs=args.gpu_jobs)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(cpu_job_script(cluster, extra_directives=args.job_extra))
    for _ in range(args.cpu_jobs):
        subprocess.run([KINDS[args.kind], f.name], check=True)
    with Client(cluster) as client:
        client.wait_for_workers(1)
        return shiftseg(["segment", args.image, "-o", args.output, "--tile", args.tile,
                         "--scheduler", cluster.scheduler_address, "--tile-resources", "GPU=1"])


if __name__ == "__main__":
    sys.exit(main())
