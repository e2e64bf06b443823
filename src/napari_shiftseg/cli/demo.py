"""``shiftseg demo -o DIR``: the main job. No arguments beyond the folder, no internet.

Generates a synthetic 3D volume, segments it lazily with the bundled 3D model in exact and naive
tiling into zarr, and writes ``REPORT.md``, ``report.json`` and PNG figures to DIR.
"""

from __future__ import annotations

import argparse

from . import _args


def add_parser(sub):
    p = sub.add_parser(
        "demo", help="segment a synthetic 3D volume in exact and naive tiling; report + figures",
        description="Generate a synthetic 3D volume, segment it with the bundled 3D model in "
                    "exact and naive tiling (zarr outputs), and write REPORT.md, report.json "
                    "and figures. Takes a few minutes on 2 CPU cores.",
    )
    p.add_argument("-o", "--output", default="shiftseg-demo", metavar="DIR",
                   help="output folder (default ./shiftseg-demo)")
    # For tests and experiments; the demo needs none of them.
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shape", type=_args.shape, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tile", type=_args.shape, default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--no-figures", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    import time
    from pathlib import Path

    from ..reproduce.demo import DEFAULT_SHAPE, DEFAULT_TILE, run_demo
    from ..util._errors import ShiftSegError

    shape = args.shape or DEFAULT_SHAPE
    tile = args.tile or DEFAULT_TILE
    if len(shape) != 3:
        raise ShiftSegError(f"--shape must be 3D (z,y,x), got {shape}")
    if len(tile) == 1:
        tile = tile * 3
    if len(tile) != 3:
        raise ShiftSegError(f"--tile must be one size or three (z,y,x), got {tile}")
    start = time.perf_counter()

    def progress(message):
        print(f"[{time.perf_counter() - start:5.0f} s] {message}", file=sys.stderr, flush=True)

    report = run_demo(args.output, model=args.model, shape=shape, tile=tile, seed=args.seed,
                      device=args.device, figures=not args.no_figures, progress=progress)
    print(Path(report["files"]["report"]).read_text())
    return 0
