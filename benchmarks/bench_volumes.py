"""Benchmark: real-looking volumes segmented with no settings (issue 24).

Six held-out stacks from :data:`napari_shiftseg.synthetic.synth_stacks.BENCHMARK_STACKS` (seeds in
``synth.TEST_SEEDS``: never trained or tuned on): nuclei 8-80 px across, z steps 1-5x the
pixel, axial blur 3x, out-of-focus haze, dim and crowded nuclei. Each is written as an ImageJ
TIFF carrying its voxel size (as a user's file would) and segmented exactly as
``shiftseg segment STACK.tif -o OUT.zarr`` does, with no other flag. The table gives, per stack,
the true and estimated median diameter, the one the run used (the estimate checked by the
model on a central crop, :mod:`napari_shiftseg.inference.size_check`), what the run decided,
the object counts, AP@0.5 and the false merges / splits (metrics.evaluate), and the seconds of
the run.

Run: ``python benchmarks/bench_volumes.py [--out DIR] [--only 0 3]`` (about 5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from napari_shiftseg.imaging import metrics, sizing
from napari_shiftseg.inference.segment import ATTRS, segment_to_zarr
from napari_shiftseg.synthetic import synth_stacks


def write_stack(stack, path: Path) -> None:
    z, y, _ = stack.voxel_size
    tifffile.imwrite(path, stack.image, imagej=True, resolution=(1 / y, 1 / y),
                     metadata={"spacing": z, "unit": "um", "axes": "ZYX"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--only", type=int, nargs="*", default=None, help="indices of the stacks to run")
    p.add_argument("--dev", action="store_true",
                   help="run the dev stacks (synth_stacks.DEV_STACKS, for choosing models) instead")
    p.add_argument("--model", default=None, help="model to run (default: what segment picks)")
    args = p.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_volumes_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    stacks = synth_stacks.DEV_STACKS if args.dev else synth_stacks.BENCHMARK_STACKS
    for index, (diameter, aniso, crowded, seed) in enumerate(stacks):
        if args.only is not None and index not in args.only:
            continue
        stack = synth_stacks.microscope_stack(diameter, aniso, seed, crowded=crowded)
        path = work / f"stack{index}.tif"
        write_stack(stack, path)
        start = time.perf_counter()
        estimate = sizing.estimate_size(stack.image, stack.voxel_size)
        t_est = time.perf_counter() - start
        start = time.perf_counter()
        group = segment_to_zarr(path, work / f"stack{index}.zarr", args.model, diameter="auto", overwrite=True)
        seconds = time.perf_counter() - start
        info = dict(group.attrs[ATTRS])
        labels = np.asarray(zarr.open_group(str(work / f"stack{index}.zarr"), mode="r")["labels/instances/0"])
        score = metrics.evaluate(stack.labels, labels)
        merges = score["false_merges"] / max(score["n_gt"], 1)
        rows.append((index, diameter, aniso, crowded, stack.image.shape, stack.diameter,
                     estimate.diameter if estimate else float("nan"), t_est, score, merges, seconds,
                     info.get("size_note", ""), float(info.get("object_diameter", float("nan")))))
        r = rows[-1]
        print(f"stack {index}: d={diameter:g} px, z step {aniso:g}x, crowded={crowded}, shape {r[4]}: "
              f"estimate {r[6]:.1f} px ({r[6] / r[5]:.2f} of true, {t_est:.2f} s), used {r[12]:.1f} px "
              f"({r[12] / r[5]:.2f}); "
              f"n_gt {score['n_gt']}, n_pred {score['n_pred']}, AP@0.5 {score['ap@0.5']:.3f}, "
              f"false merges {score['false_merges']} ({100 * merges:.1f} %), "
              f"splits {score['false_splits']}; {seconds:.1f} s\n    {r[11]}", flush=True)
    print("\n| stack | true d (px) | z step | crowded | estimate (ratio) | used (ratio) | n_gt | n_pred | "
          "AP@0.5 | false merges | false splits | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for index, _d, a, c, shape, true, est, _t, score, merges, seconds, _, used in rows:
        print(f"| {index} {shape} | {true:.1f} | {a:g}x | {'yes' if c else 'no'} | {est:.1f} ({est / true:.2f}) | "
              f"{used:.1f} ({used / true:.2f}) | "
              f"{score['n_gt']} | {score['n_pred']} | {score['ap@0.5']:.3f} | "
              f"{score['false_merges']} ({100 * merges:.1f} %) | {score['false_splits']} | {seconds:.1f} |")
    if rows:
        print(f"\nmean AP@0.5 {np.mean([r[8]['ap@0.5'] for r in rows]):.3f}; "
              f"size estimate within 25 %: {sum(abs(np.log(r[6] / r[5])) < np.log(1.25) for r in rows)}/{len(rows)}, "
              f"size used within 25 %: {sum(abs(np.log(r[12] / r[5])) < np.log(1.25) for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
