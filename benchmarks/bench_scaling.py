"""Benchmark: ``shiftseg segment`` end to end at V, 2V, 4V, 8V voxels, phase by phase (issue 27).

Does the end-to-end time of ``shiftseg segment IMAGE -o OUT.zarr`` grow linearly with the volume,
and which phase grows faster? Issue 27 measured the tiles growing ×1.7 from V to 2V and the
clustering + labelling ×3-4. This measures it again, in one invocation, for every size.

Inputs: synthetic 3D nuclei (:func:`napari_shiftseg.synthetic.synth.nuclei`: touching, elongated,
textured, blurred nuclei with shot and read noise) at V, 2V, 4V, 8V voxels (``--scales``; the
shape doubles one axis at a time, x first). The nuclei are the same size at every scale (radius
7-8.5 px, a median diameter of ~14 px: the bundled 3D model's scale, so the size estimate finds
~12 px, within the 1.2x tolerance, and nothing is resampled) and the same density (~230 per
Mvoxel), so the nuclei count grows with the volume. ``microscope_stack`` was not used because
its shape follows from the nucleus size (and it resamples), ``synth_large.jittered_lattice``
because perfect spheres on a lattice are easier than real nuclei. Each input is written first
(``--format zarr``, chunks ``--chunk``, or an uncompressed TIFF, which is memory-mapped and then
counts in the RSS), so reading it is part of the run.

Each run is one fresh subprocess that calls ``shiftseg segment IMAGE -o OUT.zarr --quiet`` (the
CLI's defaults: bundled 3D model, ``--diameter auto``, tile 128, device auto) through
``napari_shiftseg.cli.main``, in process, with hooks that only take timestamps:

- ``estimate``: :func:`napari_shiftseg.imaging.sizing.estimate_size` (wrapped; every call segment makes);
- ``size_check``: :func:`napari_shiftseg.inference.size_check.refine_diameter`, the model's check
  of the estimate on a central crop of at most 2^20 network voxels (constant in the volume);
- ``setup``: the rest until the ``tiles`` stage: reading metadata, the model, the image
  fingerprint (it reads every voxel), creating the output;
- ``tiles``: the network over all tiles (reading the input, writing embeddings), stage
  ``tiles`` to ``clustering``;
- ``clustering``: mean-shift, stage ``clustering`` to ``labels``;
- ``labels``: assigning voxels to modes, labelling, relabelling, writing, resampling back (when
  resampled) and the label statistics: stage ``labels`` until ``segment_to_zarr`` returns.
  (``write_instances`` alone is also recorded in ``--json``.)

A second table looks inside: the sample read and mean-shift (the global one, or every cube's)
inside ``clustering``, and the CPU seconds (all threads) of ``clustering`` and ``labels``,
which tell the work apart from the waiting for a core under ``--load``.

``end-to-end`` is the ``shiftseg segment`` call; Python start-up and imports (constant) are
left out and recorded in ``--json``. Peak RSS is the child's ``VmHWM`` (/proc/self/status), read
at its end. Resampling, if the size estimate asked for it, happens lazily inside ``tiles`` and
``labels``: the factor is printed under the tables, with the model that ran (a stack thinner
than its nuclei runs the 2D model plane by plane, e.g. ``--base 16 64 64``).

Make V at least a few 128-voxel tiles per core (the default V is 4 tiles): with fewer, V leaves
cores idle during the tiles (dask runs one tile per core) and the larger sizes look better
than linear.

``--load N`` keeps N pure-Python busy processes spinning for the whole measured part (killed at
the end, on Ctrl-C too): run once idle and once with ``--load 4``. ``--repeats R`` runs
V, 2V, 4V, 8V, V, 2V, ... (interleaved) and reports the median and the range. ``--threads N``
goes to ``shiftseg segment --threads`` when the CLI has it; otherwise the child gets
``OMP_NUM_THREADS=N`` and ``torch.set_num_threads(N)`` (said in the header).

Prints markdown: the times per size, their ratios to the smallest size, each phase's growth per
doubling, and the checks of issue 27 ("Done when", measured at the largest scale; at 8V: end to
end ≤ 9x V, no phase > x2.3 per doubling, clustering + labels ≤ 35 % of end to end, peak RSS ≤
1.3x V), PASS or FAIL each. It asserts nothing.

    python benchmarks/bench_scaling.py                       # V = 64x256x256 (4.2 Mvoxel), 1 2 4 8
    python benchmarks/bench_scaling.py --load 4 --repeats 3  # the same with 4 busy processes
    python benchmarks/bench_scaling.py --scales 1 2 4 8 16 --workdir /big/disk --json out.json
    python benchmarks/bench_scaling.py --base 16 64 64 --scales 1 2   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _load import busy  # noqa: E402 (benchmarks/ is on sys.path)

#: Columns of the phase tables, in run order.
PHASES = ("estimate", "size_check", "setup", "tiles", "clustering", "labels")
#: Nuclei radius range (px) and seed of the synthetic volumes: the median diameter is ~14 px,
#: the bundled 3D model's (checked at 32x128x128 to 64x256x512: the estimate says 12 px, true
#: 14.0-14.1 px, ~234 nuclei per Mvoxel). The seed is outside ``synth.TEST_SEEDS``.
RADIUS = (7.0, 8.5)
SEED = 2701
#: Issue 27, "Done when" (at 8V; the end-to-end bound scales with the largest scale measured).
E2E_SLACK = 9 / 8          # end-to-end at sV <= s * 9/8 x V
PHASE_GROWTH = 2.3         # per doubling
CLUSTER_SHARE = 0.35       # (clustering + labels) / end-to-end at the largest scale
RSS_GROWTH = 1.3           # peak RSS at the largest scale / at V


def scaled_shape(base, scale: int) -> tuple[int, ...]:
    """``base`` grown ``scale`` times in voxels: one axis doubled at a time, x, y, z, x, ..."""
    if scale < 1 or scale & (scale - 1):
        raise SystemExit(f"scale {scale} must be a power of two")
    shape = list(base)
    for i in range(int(math.log2(scale))):
        shape[len(shape) - 1 - (i % len(shape))] *= 2
    return tuple(shape)


# ---------------------------------------------------------------------------------------------
# child: one `shiftseg segment` run, prints one JSON line
# ---------------------------------------------------------------------------------------------
def child(spec: dict) -> None:
    began = time.perf_counter()
    # The package first: its thread defaults (OMP_WAIT_POLICY) go into the environment before
    # torch loads its OpenMP runtime.
    import napari_shiftseg.imaging.sizing as nsizing
    import napari_shiftseg.inference.clustering as nclustering
    import napari_shiftseg.inference.instances as ninstances
    import napari_shiftseg.inference.segment as nsegment
    import napari_shiftseg.inference.size_check as nsize_check
    from napari_shiftseg.cli import main

    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    import torch

    if spec["threads"] and spec["threads_via"] == "env":
        torch.set_num_threads(spec["threads"])
    imported = time.perf_counter()
    rss_imported = _status_mib("VmRSS")

    estimate = {"seconds": 0.0, "calls": 0, "depth": 0, "diameter": None, "thin": None}
    estimate_size = nsizing.estimate_size

    def timed_estimate(*args, **kwargs):  # segment imports it at call time: this one runs
        outer = estimate["depth"] == 0
        estimate["depth"] += 1
        start = time.perf_counter()
        try:
            result = estimate_size(*args, **kwargs)
        finally:
            estimate["depth"] -= 1
        if outer:
            estimate["seconds"] += time.perf_counter() - start
            estimate["calls"] += 1
            if result is not None and estimate["diameter"] is None:
                estimate["diameter"], estimate["thin"] = float(result.diameter), bool(result.thin)
        return result

    nsizing.estimate_size = timed_estimate

    # Seconds spent in wrapped functions, by name. Inside the clustering phase: reading the
    # sample (every read segment's clustering makes) and mean-shift (the global one, or every
    # cube's); apart: the model's check of the estimate on a central crop (a 3D model's runs, of
    # constant cost: the crop is bounded), counted apart from setup, and write_instances.
    inner = {"sample_read": 0.0, "mean_shift": 0.0}
    spent = {"size_check": 0.0, "write_instances": 0.0}

    def timed(name, function, into=inner):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into[name] += time.perf_counter() - start
        return call

    nsize_check.refine_diameter = timed("size_check", nsize_check.refine_diameter, spent)
    ninstances.write_instances = timed("write_instances", ninstances.write_instances, spent)

    make_reader = nclustering._reader
    nclustering._reader = lambda *args, **kwargs: timed("sample_read", make_reader(*args, **kwargs))
    nclustering.mean_shift = timed("mean_shift", nclustering.mean_shift)

    stamps: dict[str, float] = {}
    cpu: dict[str, float] = {}
    threads: dict[str, int] = {}
    returned: dict = {}
    segment_to_zarr = nsegment.segment_to_zarr

    def timed_segment(*args, stage=None, **kwargs):  # the CLI imports it at call time
        def timed_stage(name):
            stamps.setdefault(name, time.perf_counter())
            cpu.setdefault(name, time.process_time())
            threads[name] = torch.get_num_threads()
            if stage is not None:
                stage(name)

        group = segment_to_zarr(*args, stage=timed_stage, **kwargs)
        returned["time"] = time.perf_counter()
        returned["cpu"] = time.process_time()
        returned["info"] = dict(group.attrs[nsegment.ATTRS])
        return group

    nsegment.segment_to_zarr = timed_segment

    argv = ["segment", spec["image"], "-o", spec["output"], "--quiet", *spec["extra"]]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        rc = main(argv)
    end = time.perf_counter()
    result = {"rc": rc, "peak_mib": _status_mib("VmHWM"), "rss_after_imports_mib": rss_imported,
              "imports": imported - began, "load_before": load_before, "load_after": os.getloadavg()[0],
              "estimate_calls": estimate["calls"], "estimate_diameter": estimate["diameter"],
              "thin": estimate["thin"], "torch_threads": threads, "omp_wait_policy": wait_policy,
              "stamps_seen": sorted(stamps)}
    if rc == 0 and {"tiles", "clustering", "labels"} <= set(stamps) and returned:
        info = returned["info"]
        result.update({
            "estimate": estimate["seconds"],
            "size_check": spent["size_check"],
            "setup": stamps["tiles"] - start - estimate["seconds"] - spent["size_check"],
            "tiles": stamps["clustering"] - stamps["tiles"],
            "clustering": stamps["labels"] - stamps["clustering"],
            "labels": returned["time"] - stamps["labels"],
            "write_instances": spent["write_instances"],
            **inner,
            # CPU seconds of all this process's threads: the work, apart from waiting for a core.
            "clustering_cpu": cpu["labels"] - cpu["clustering"],
            "labels_cpu": returned["cpu"] - cpu["labels"],
            "end_to_end": end - start,
            "objects": info.get("n_objects"),
            "per_slice": bool(info.get("embedding_args", {}).get("per_slice")),
            "resampled_to": info.get("embedding_args", {}).get("resampled_to"),
            "size_note": info.get("size_note", ""),
            "tiles_count": info.get("tiles"),
        })
    print(json.dumps(result))


def _status_mib(field: str) -> int | None:
    """``VmHWM`` (peak) or ``VmRSS`` of this process in MiB (tests/helpers.py ``peak_mib``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    if field != "VmHWM":
        return None
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


# ---------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------
def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds: busy processes and children are killed


def segment_threads_option() -> bool:
    """Whether ``shiftseg segment`` takes ``--threads`` (issue 27 may add it)."""
    from napari_shiftseg.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "--threads" in action.choices["segment"]._option_string_actions
    return False


def make_input(folder: Path, shape, fmt: str, chunk: int) -> tuple[Path, int, float]:
    """Write the synthetic volume of ``shape``; returns (path, nuclei, seconds to generate)."""
    import numpy as np

    from napari_shiftseg.synthetic.synth import nuclei

    start = time.perf_counter()
    image, labels = nuclei(shape, seed=SEED, radius=RADIUS)
    count = int(labels.max())
    del labels
    seconds = time.perf_counter() - start
    name = "x".join(map(str, shape))
    if fmt == "tif":
        import tifffile

        path = folder / f"nuclei_{name}.tif"
        tifffile.imwrite(path, np.ascontiguousarray(image))
    else:
        import zarr

        path = folder / f"nuclei_{name}.zarr"
        out = zarr.create_array(path, shape=shape, chunks=tuple(min(chunk, s) for s in shape),
                                dtype="float32", overwrite=True)
        out[...] = image
    return path, count, seconds


def run_child(spec: dict, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if result["rc"] != 0 or "end_to_end" not in result:
        raise RuntimeError(f"shiftseg segment failed (exit {result['rc']}, stages seen "
                           f"{result['stamps_seen']}): {out.stderr[-3000:]}")
    result["process_wall"] = wall
    return result


def _fmt(values: list[float], digits: int = 1) -> str:
    """The value, or 'median (min-max)' over repeats."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(rows: dict, scales: list[int], inputs: dict, header: str, min_phase: float) -> None:
    """Print the tables and the checks. ``rows[scale]`` is the list of that scale's runs."""
    med = {s: {k: statistics.median(r[k] for r in rows[s])
               for k in (*PHASES, "end_to_end", "peak_mib")} for s in scales}
    for s in scales:
        med[s]["voxels_s"] = inputs[s]["voxels"] / med[s]["end_to_end"]
    ref = scales[0]
    name = {s: f"{s // ref}V" if s % ref == 0 else f"{s}/{ref}V" for s in scales}

    print(header)
    print()
    print("| size | shape | voxels | nuclei | objects | estimate s | size check s | setup s | tiles s | clustering s "
          "| labels s | end-to-end s | peak RSS MiB | Mvoxel/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in scales:
        runs, info = rows[s], inputs[s]
        objects = sorted({r["objects"] for r in runs})
        cells = [_fmt([r[p] for r in runs], 2 if p in ("estimate", "size_check", "setup") else 1) for p in PHASES]
        print(f"| {name[s]} | {'x'.join(map(str, info['shape']))} | {info['voxels'] / 1e6:.2f} M "
              f"| {info['nuclei']} | {'/'.join(map(str, objects))} | {' | '.join(cells)} "
              f"| {_fmt([r['end_to_end'] for r in runs])} | {_fmt([r['peak_mib'] for r in runs], 0)} "
              f"| {_fmt([info['voxels'] / r['end_to_end'] / 1e6 for r in runs], 3)} |")

    print()
    print(f"Ratios to {name[ref]} (medians):")
    print()
    print("| size | voxels | " + " | ".join(p.replace("_", " ") for p in PHASES) + " | end-to-end | peak RSS "
          "| voxels/s |")
    print("|---|---|" + "---|" * (len(PHASES) + 3))
    for s in scales:
        cells = [f"×{med[s][k] / med[ref][k]:.2f}" if med[ref][k] > 0 else "–"
                 for k in (*PHASES, "end_to_end", "peak_mib", "voxels_s")]
        print(f"| {name[s]} | ×{s / ref:g} | {' | '.join(cells)} |")

    growth: dict[str, list[tuple[float, int, int, bool]]] = {p: [] for p in (*PHASES, "end_to_end")}
    for a, b in zip(scales, scales[1:]):
        doublings = math.log2(b / a)
        for p in growth:
            ta, tb = med[a][p], med[b][p]
            factor = (tb / ta) ** (1 / doublings) if ta > 0 else math.inf
            growth[p].append((factor, a, b, max(ta, tb) >= min_phase))
    if len(scales) > 1:
        print()
        print(f"Growth per doubling of the volume (medians; steps where both times are under "
              f"{min_phase:g} s are in brackets, too short to judge):")
        print()
        print("| step | " + " | ".join((*PHASES, "end-to-end")) + " |")
        print("|---|" + "---|" * (len(PHASES) + 1))
        for i, (a, b) in enumerate(zip(scales, scales[1:])):
            cells = []
            for p in growth:
                factor, *_, judged = growth[p][i]
                cells.append(f"×{factor:.2f}" if judged else f"(×{factor:.2f})")
            print(f"| {name[a]} → {name[b]} | {' | '.join(cells)} |")

    inner = ("sample_read", "mean_shift", "clustering_cpu", "labels_cpu")
    if all(k in r for s in scales for r in rows[s] for k in inner):
        print()
        print("Inside the phases (medians; growth per doubling from the size before): the sample "
              "read and mean-shift inside clustering, and the CPU seconds of clustering and labels "
              "(all threads: the work, apart from waiting for a core):")
        print()
        print("| size | sample read s | mean-shift s | clustering CPU s | labels CPU s |")
        print("|---|---|---|---|---|")
        for i, s in enumerate(scales):
            cells = []
            for k in inner:
                value = statistics.median(r[k] for r in rows[s])
                before = statistics.median(r[k] for r in rows[scales[i - 1]]) if i else 0.0
                step = (value / before) ** (1 / math.log2(s / scales[i - 1])) if i and before > 0 else None
                cells.append(f"{value:.2f}" + (f" (×{step:.2f})" if step else ""))
            print(f"| {name[s]} | {' | '.join(cells)} |")

    # Where the notes of the run differ from "3D model, as imaged", say so.
    print()
    for s in scales:
        r = rows[s][0]
        est, resampled = r["estimate_diameter"], r["resampled_to"]
        notes = [f"size estimate {est:.1f} px" if est is not None else "no size estimate",
                 "2D model plane by plane (a stack thinner than its nuclei)" if r["per_slice"] else "3D model",
                 f"{r['tiles_count']} tile(s)",
                 (f"resampled to {'x'.join(map(str, resampled))} (inside tiles and labels)" if resampled
                  else "not resampled"),
                 f"torch threads at tiles/clustering {r['torch_threads'].get('tiles')}/"
                 f"{r['torch_threads'].get('clustering')}",
                 f"imports {r['imports']:.1f} s, {r['rss_after_imports_mib']} MiB after them"]
        print(f"- {name[s]}: " + "; ".join(notes))

    top = scales[-1]
    if len(scales) < 2:
        print("\nOne scale only: no checks.")
        return
    at = f"at {name[top]}" + ("" if top == 8 * ref else " (the issue asks at 8V)")
    e2e = med[top]["end_to_end"] / med[ref]["end_to_end"]
    bound = E2E_SLACK * top / ref
    judged = [(f, p, a, b) for p in PHASES for f, a, b, ok in growth[p] if ok]
    worst = max(judged, default=None)
    share = (med[top]["clustering"] + med[top]["labels"]) / med[top]["end_to_end"]
    rss = med[top]["peak_mib"] / med[ref]["peak_mib"]

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    print()
    print(f"Checks (issue 27, medians, {at}):")
    print()
    print(f"- {verdict(e2e <= bound)} linear time: end-to-end {name[top]} / {name[ref]} = ×{e2e:.2f} "
          f"(≤ ×{bound:g})")
    if worst is None:
        print(f"- n/a phase growth: every phase under {min_phase:g} s")
    else:
        f, p, a, b = worst
        print(f"- {verdict(f <= PHASE_GROWTH)} phase growth: fastest {p} ×{f:.2f} per doubling "
              f"({name[a]} → {name[b]}; ≤ ×{PHASE_GROWTH:g})")
    print(f"- {verdict(share <= CLUSTER_SHARE)} clustering stays a minority: clustering + labels "
          f"(incl. writing) = {100 * share:.0f} % of end-to-end at {name[top]} (≤ {100 * CLUSTER_SHARE:.0f} %)")
    print(f"- {verdict(rss <= RSS_GROWTH)} flat memory: peak RSS {name[top]} / {name[ref]} = ×{rss:.2f} "
          f"(≤ ×{RSS_GROWTH:g})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"),
                        help="shape of V (default 64 256 256: 4.2 Mvoxel, as in issue 27)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="multiples of V, powers of two (default 1 2 4 8; add 16 where the disk allows)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per size (default 1)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="busy processes spinning during the runs (default 0; the issue: 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for segment (default: segment's own choice)")
    parser.add_argument("--device", default=None, help="passed to segment --device (default: its auto)")
    parser.add_argument("--tile", default=None,
                        help="passed to segment --tile (default: its own, which grows with the image "
                             "until the memory budget caps it; a fixed tile shows memory per tile)")
    parser.add_argument("--format", choices=("zarr", "tif"), default="zarr", help="input file format")
    parser.add_argument("--chunk", type=int, default=64, help="zarr chunk per axis of the input (default 64)")
    parser.add_argument("--min-phase", type=float, default=0.5,
                        help="phase steps shorter than this (s) at both ends are not judged (default 0.5)")
    parser.add_argument("--workdir", default=None, help="where the volumes go (default: a temp folder)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run before giving up")
    parser.add_argument("--json", metavar="FILE", help="also write every run's measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.repeats < 1 or args.load < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1, --load >= 0")
    scales = sorted(set(args.scales))
    signal.signal(signal.SIGTERM, _raise_on_sigterm)

    env = dict(os.environ)
    extra: list[str] = []
    threads_via = None
    if args.threads:
        threads_via = "option" if segment_threads_option() else "env"
        if threads_via == "option":
            extra += ["--threads", str(args.threads)]
        else:
            env["OMP_NUM_THREADS"] = str(args.threads)
    if args.device:
        extra += ["--device", args.device]
    if args.tile:
        extra += ["--tile", str(args.tile)]

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        inputs = {}
        for s in scales:
            shape = scaled_shape(args.base, s)
            path, count, seconds = make_input(tmp, shape, args.format, args.chunk)
            inputs[s] = {"shape": shape, "voxels": math.prod(shape), "nuclei": count, "path": str(path)}
            print(f"  made {path.name}: {count} nuclei in {seconds:.1f} s", file=sys.stderr, flush=True)
        rows: dict[int, list[dict]] = {s: [] for s in scales}
        load_start = os.getloadavg()[0]
        with busy(args.load):
            for rep in range(args.repeats):
                for s in scales:
                    output = tmp / f"out_{s}x_{rep}.zarr"
                    spec = {"image": inputs[s]["path"], "output": str(output), "extra": extra,
                            "threads": args.threads, "threads_via": threads_via}
                    result = run_child(spec, env, args.timeout)
                    shutil.rmtree(output, ignore_errors=True)
                    rows[s].append(result)
                    print(f"  rep {rep} {s}x {'x'.join(map(str, inputs[s]['shape']))}: "
                          f"{result['end_to_end']:.1f} s (" + ", ".join(f"{p} {result[p]:.1f}" for p in PHASES)
                          + f"), peak {result['peak_mib']} MiB, {result['objects']} objects, "
                          f"load {result['load_before']:.1f}", file=sys.stderr, flush=True)

    threads = ("segment's default" if not args.threads else
               f"{args.threads} via segment --threads" if threads_via == "option" else
               f"{args.threads} (segment has no --threads: OMP_NUM_THREADS and torch.set_num_threads "
               "in the child)")
    header = (f"# bench_scaling: V = {'x'.join(map(str, args.base))} ({math.prod(args.base) / 1e6:.2f} Mvoxel), "
              f"scales {' '.join(map(str, scales))}, {args.repeats} repeat(s) interleaved, "
              f"{args.load} busy process(es), {os.cpu_count()} CPUs (affinity "
              f"{len(os.sched_getaffinity(0))}), threads: {threads}, input {args.format}, load "
              f"average at start {load_start:.2f}, total {time.perf_counter() - began:.0f} s")
    report(rows, scales, inputs, header, args.min_phase)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "inputs": {str(s): inputs[s] for s in scales},
                                               "runs": {str(s): rows[s] for s in scales}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
