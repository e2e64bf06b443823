"""Benchmark: the segment output writer, OME-Zarr 0.5 (zarr v3) against 0.4 (zarr v2).

Segments the same synthetic nuclei volume with the bundled 3D model into both formats,
interleaved (``--repeats`` times each), and prints wall time, bytes on disk, files, and the
bytes of metadata (``zarr.json`` / ``.zattrs`` / ``.zarray`` / ``.zgroup``). The arrays and the
computation are the same in both; what the OME-Zarr layout adds over a plain zarr group is the
metadata column (a few kB), and the labels' new place (``labels/instances/0``).

Run: ``python benchmarks/bench_writer.py [--shape 64,256,256] [--tile 64] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_shiftseg.inference.segment import segment_to_zarr
from napari_shiftseg.synthetic import synth

META = {"zarr.json", ".zattrs", ".zarray", ".zgroup"}


def disk(path: Path) -> tuple[int, int, int]:
    """(bytes, files, metadata bytes) under ``path``."""
    total = files = meta = 0
    for root, _, names in os.walk(path):
        for name in names:
            size = os.path.getsize(os.path.join(root, name))
            total, files = total + size, files + 1
            meta += size if name in META else 0
    return total, files, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="64,256,256")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    image, _ = synth.nuclei(shape, seed=5)
    image = image.astype(np.float32)
    times = {"0.5": [], "0.4": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for version in times:  # interleaved: both see the same machine load
                out = Path(tmp) / f"out{version}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                segment_to_zarr(image, out, None, tile=args.tile, device="cpu", ngff=version,
                                diameter=None)
                times[version].append(time.perf_counter() - start)
                sizes[version] = disk(out)
    print(f"volume {shape}, tile {args.tile}, {args.repeats} interleaved runs each\n")
    print(f"{'format':<22} {'seconds (min-max)':>18} {'MB on disk':>11} {'files':>7} {'metadata kB':>12}")
    for version, label in (("0.5", "OME-Zarr 0.5 (zarr v3)"), ("0.4", "OME-Zarr 0.4 (zarr v2)")):
        t = times[version]
        total, files, meta = sizes[version]
        print(f"{label:<22} {min(t):>8.1f}-{max(t):<9.1f} {total / 1e6:>11.1f} {files:>7} {meta / 1e3:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
