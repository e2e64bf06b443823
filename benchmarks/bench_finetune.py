"""Benchmark: `shiftseg train` with defaults on ONE annotated 256 x 256 crop, scored on held-out images.

The issue's bar: a user who annotates a few dozen nuclei and runs
``shiftseg train --image crop.tif --labels crop_labels.tif -o model.safetensors`` with nothing
else gets a good model within 15 minutes of a 2-core CPU. The crop is the top-left 256 x 256 of
a BBBC007 *train* image; the scores are on the BBBC007 *test* split (never trained or tuned on).

Two runs, side by side:
* ``default``: the command as a user types it (since the ninth session: continue the bundled
  model, 1000 steps at 3e-4; before it, a new network);
* ``scratch``: the same with ``--init none``: a new network, 3000 steps at 1e-3.

    python benchmarks/bench_finetune.py [--image "17P1_POS0011_D_1UL"] [--runs default scratch]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    import bbbc007

    from napari_shiftseg.cli import main as shiftseg
    from napari_shiftseg.imaging.classical import otsu_watershed
    from napari_shiftseg.inference.evaluate import format_scores, model_method, score_methods
    from napari_shiftseg.network.modelio import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="17P1_POS0011_D_1UL", help="BBBC007 train image to crop")
    p.add_argument("--runs", nargs="+", default=["default", "scratch"], choices=("default", "scratch"))
    p.add_argument("--extra", default="", help="extra shiftseg train options, e.g. '--steps 500'")
    args = p.parse_args(argv)
    train = {name: (image, labels) for name, image, labels in bbbc007.load("train")}
    image, labels = (a[:256, :256] for a in train[args.image])
    test = bbbc007.load("test")
    work = Path(tempfile.mkdtemp(prefix="shiftseg-finetune-"))
    tifffile.imwrite(work / "crop.tif", image)
    tifffile.imwrite(work / "crop_labels.tif", labels.astype(np.uint16))
    print(f"crop of {args.image}: 256 x 256, {len(np.unique(labels)) - 1} annotated nuclei", flush=True)
    methods = {"Otsu + watershed": otsu_watershed}
    for run in args.runs:
        out = work / f"{run}.safetensors"
        argv = ["train", "--image", str(work / "crop.tif"), "--labels", str(work / "crop_labels.tif"),
                "--quiet", "-o", str(out), *args.extra.split()]
        if run == "scratch":
            argv += ["--init", "none"]
        start = time.perf_counter()
        code = shiftseg(argv)
        seconds = time.perf_counter() - start
        meta = load_model(out).meta
        print(f"{run}: exit {code}, {seconds:.0f} s wall, {meta['steps']} steps, window "
              f"{meta['training_window']}, validation {meta.get('validation')}", flush=True)
        methods[f"{run} ({seconds / 60:.1f} min)"] = model_method(load_model(out))
    rows, summary = score_methods(test, methods)
    print(format_scores(rows, summary, title="BBBC007 test split (3 images)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
