"""``shiftseg train`` seconds per step (or a mean-shift run), idle and with busy processes, per thread setting.

Issue 25/27: under load, ``shiftseg train`` with defaults ran at 4.3 s/step. This measures
whether thread oversubscription (torch's intra-op threads and OpenMP busy-waiting on cores
shared with other busy processes) explains it, and what ``napari_shiftseg.util.threads`` changes.

Each configuration runs ``shiftseg train`` in a fresh subprocess (so the environment applies
when torch and its OpenMP runtime load) on a synthetic 256 x 256 nuclei image, with the
defaults of ``shiftseg train --image IMG --labels LBL`` (continue the bundled 2D model, batch
4, window from the objects) except ``--steps`` and ``--validation 0`` (validation runs
outside the steps and does not change their speed). s/step is the mean over the steps after
the first (the first builds the oneDNN kernels), taken from the progress callback.

``--workload meanshift`` times instead what the mean-shift benchmark (``bench_meanshift.py``)
times, in the same fresh-process configurations: :func:`~napari_shiftseg.inference.meanshift.mean_shift`
plus :func:`~napari_shiftseg.inference.meanshift.assign_to_modes` on 200,000 3-D points in 300
blobs (bandwidth 1); the "s/step" column is then seconds per run (the median of 3 runs after
one warm-up). Its "after" sets torch's threads with ``choose_threads()`` as ``shiftseg
segment`` does before clustering.

Configurations (default run):
- ``before``: as before napari_shiftseg.util.threads: torch's default threads (all CPUs) and no
  ``OMP_WAIT_POLICY`` (torch is imported before the package, whose default then does not
  reach the OpenMP runtime).
- ``after``: the package as it is: ``OMP_WAIT_POLICY=PASSIVE`` and ``choose_threads()``.
- ``1 thread``: the package with one thread asked for (``--threads 1``): issue 27 asks that the
  defaults be no slower than this under load.

``--matrix`` adds torch threads 1 and 2 x OMP_WAIT_POLICY unset / PASSIVE (the investigation).

Loads: ``idle`` (nothing started by the benchmark) and ``busyN`` (N ``while True: pass``
processes started and killed by the benchmark; ``--busy``, default 4). Repeats are
interleaved (repeat, then load, then configuration, the order rotated per repeat) because
the machine is shared and noisy; the table gives min / median / max over the repeats.

    python benchmarks/bench_threads.py                 # before/after, 3 repeats: 4-9 min on 2 cores
    python benchmarks/bench_threads.py --matrix --repeats 3 --steps 15
    python benchmarks/bench_threads.py --workload meanshift --only after,"1 thread"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _load import busy  # noqa: E402 (benchmarks/ is on sys.path)

#: Variables the benchmark controls: removed from every child's environment unless a
#: configuration sets them.
CONTROLLED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

# name -> (torch threads: "default" | "choose" | int, "package" | environment for the child)
CONFIGS = {
    "before": ("default", {}),
    "after": ("choose", "package"),
    "1 thread": (1, "package"),
}
MATRIX = {
    "t1 spin": (1, {}),
    "t2 spin": (2, {}),
    "t1 PASSIVE": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "t2 PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
#: --spincount: libgomp spins this many times before it sleeps (default 300000; PASSIVE: 0)
SPINCOUNT = {
    "t2 SPINCOUNT=10k": (2, {"GOMP_SPINCOUNT": "10000"}),
    "t2 PASSIVE+10k": (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}),
}


# ---------------------------------------------------------------------------------------------
# child: one training run, prints one JSON line
# ---------------------------------------------------------------------------------------------
def child(spec: dict) -> None:
    threads, env = spec["threads"], spec["env"]
    if env == "package":
        import napari_shiftseg  # noqa: F401  (sets its defaults before torch loads)
    # what the OpenMP runtime sees: it reads the environment when torch loads it
    policy = os.environ.get("OMP_WAIT_POLICY")
    import torch  # before the package unless "package": its default then comes too late

    import napari_shiftseg.training.train as ntrain
    import napari_shiftseg.util.threads as nthreads
    from napari_shiftseg.cli import main

    load = nthreads.current_load() or 0.0  # what choose_threads sees (a moment later)
    if spec.get("workload") == "meanshift":
        meanshift_child(spec, torch, nthreads, policy, load)
        return
    if threads == "default":
        nthreads.choose_threads = lambda requested=None, **_: requested or torch.get_num_threads()
    stamps: list[float] = []
    used: list[int] = []
    train = ntrain.train

    def timed_train(*args, progress=None, **kwargs):
        def wrapped(step, parts):
            stamps.append(time.perf_counter())
            if not used:
                used.append(torch.get_num_threads())
            if progress is not None:
                progress(step, parts)
        return train(*args, progress=wrapped, **kwargs)

    ntrain.train = timed_train
    argv = ["train", "--image", spec["image"], "--labels", spec["labels"], "--steps", str(spec["steps"]),
            "--validation", "0", "--quiet", "-o", spec["output"]]
    if isinstance(threads, int):
        argv += ["--threads", str(threads)]
    start = time.perf_counter()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        rc = main(argv)
    wall = time.perf_counter() - start
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    print(json.dumps({"rc": rc, "s_per_step": sum(steps) / len(steps), "first_step": stamps[0] - start,
                      "wall": wall, "threads": used[0] if used else None,
                      "wait_policy": policy, "load_at_start": load,
                      "load": os.getloadavg()[0]}))


def meanshift_child(spec: dict, torch, nthreads, policy, load) -> None:
    """The mean-shift workload: seconds per mean_shift + assign_to_modes run."""
    from bench_meanshift import make_blobs

    from napari_shiftseg.inference.meanshift import assign_to_modes, mean_shift

    threads = spec["threads"]
    if threads == "choose":
        torch.set_num_threads(nthreads.choose_threads())
    elif isinstance(threads, int):
        torch.set_num_threads(threads)
    points, _ = make_blobs(200_000, 300, seed=1)
    seconds = []
    for _ in range(4):  # the first builds torch's kernels: left out
        start = time.perf_counter()
        assign_to_modes(points, mean_shift(points, 1.0))
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"rc": 0, "s_per_step": statistics.median(seconds[1:]), "first_step": seconds[0],
                      "wall": sum(seconds), "threads": torch.get_num_threads(), "wait_policy": policy,
                      "load_at_start": load, "load": os.getloadavg()[0]}))


# ---------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------
def run_child(spec: dict, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    if spec["env"] != "package":
        env.update(spec["env"])
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def make_data(folder: Path) -> tuple[str, str]:
    subprocess.run([sys.executable, "-m", "napari_shiftseg.cli", "synth", "nuclei", "--shape", "256,256",
                    "--seed", "1", "-o", str(folder)], check=True, capture_output=True)
    return str(folder / "image.tif"), str(folder / "labels.tif")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    parser.add_argument("--workload", choices=("train", "meanshift"), default="train",
                        help="what each child times (default train)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--busy", type=int, default=4, help="busy processes for the loaded runs (default 4)")
    parser.add_argument("--matrix", action="store_true", help="also threads 1/2 x OMP_WAIT_POLICY unset/PASSIVE")
    parser.add_argument("--spincount", action="store_true", help="also 2 threads with GOMP_SPINCOUNT=10000")
    parser.add_argument("--only-matrix", action="store_true", help="the matrix without before/after")
    parser.add_argument("--only", metavar="NAME,...", help="only these configurations (names as in the table)")
    parser.add_argument("--loads", default="idle,busy", help="idle, busy or both (default idle,busy)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run before giving up")
    parser.add_argument("--json", metavar="FILE", help="also write every run's result here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0

    configs = {} if args.only_matrix else dict(CONFIGS)
    if args.matrix or args.only_matrix:
        configs.update(MATRIX)
    if args.spincount:
        configs.update(SPINCOUNT)
    if args.only:
        configs = {k: v for k, v in {**CONFIGS, **MATRIX, **SPINCOUNT}.items() if k in args.only.split(",")}
    loads = [(name, n) for name, n in (("idle", 0), (f"busy{args.busy}", args.busy))
             if name.rstrip("0123456789") in args.loads.split(",")]
    names = list(configs)
    results: dict[tuple[str, str], list[dict]] = {(c, load): [] for c in names for load, _ in loads}
    print(f"# {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}, {args.steps} steps, "
          f"{args.repeats} repeats, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        image, labels = make_data(Path(tmp) / "data")
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for load, n in (loads if rep % 2 == 0 else loads[::-1]):
                with busy(n):
                    for name in order:
                        threads, env = configs[name]
                        spec = {"threads": threads, "env": env, "steps": args.steps, "image": image,
                                "workload": args.workload,
                                "labels": labels, "output": str(Path(tmp) / f"{rep}.safetensors")}
                        result = run_child(spec, args.timeout)
                        results[(name, load)].append(result)
                        print(f"  rep {rep} {load:>6} {name:<16} {result['s_per_step']:.3f} s "
                              f"({result['threads']} thread(s), OMP_WAIT_POLICY={result['wait_policy']}, "
                              f"wall {result['wall']:.1f} s, load {result['load_at_start']:.1f}, "
                              f"load average after {result['load']:.1f})", flush=True)
    print(f"\n# total {time.perf_counter() - began:.0f} s\n")
    unit = "s/step" if args.workload == "train" else "s/run"
    print(f"| configuration | threads | load | {unit} min | median | max |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for load, _ in loads:
            runs = results[(name, load)]
            values = [r["s_per_step"] for r in runs]
            threads = sorted({r["threads"] for r in runs})
            print(f"| {name} | {'/'.join(map(str, threads))} | {load} | {min(values):.3f} | "
                  f"{statistics.median(values):.3f} | {max(values):.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
