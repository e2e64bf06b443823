"""Benchmark: `shiftseg train` on ONE annotated 3D volume, scored on held-out volumes of its kind.

A user annotates one volume from their microscope and trains. The bundled 3D model never saw
that microscope: the scenes here change what it learnt (strong chromatin texture, an axial
blur of 3 voxels, a bright background, 60 photons, elongated irregular nuclei). One
64 x 128 x 128 volume is trained on; three more of the same scene (other seeds) are scored.

Runs, side by side (each row prints its wall time on this machine):
* ``bundled``: the bundled 3D model as is;
* ``new``: a new network (``--init none``: l = 2, the 3D default) for the same steps, at the
  2D default rate 1e-3;
* ``default``: the command as a user types it (3D: fine-tune the bundled model, 1000 steps at
  3e-4, batch 2);
* Otsu + watershed.

    python benchmarks/bench_finetune_3d.py [--scenes wide narrow] [--steps 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import tifffile

#: The "other microscope" (synth.NucleiScene fields) and, per scene, its nucleus radii and seeds
#: (the first is trained on). Radii are drawn per volume, so "wide" mixes 12-20 px volumes.
APPEARANCE = {"texture": 0.8, "blur": (3.0, 1.0, 1.0), "background": 0.3, "photons": 60.0,
              "elongation": 2.0, "irregularity": 0.3}
SCENES = {"wide": ((6, 12), (901, 902, 903, 904)), "narrow": ((7, 9), (911, 912, 913, 914))}
SHAPE = (64, 128, 128)


def main(argv=None) -> int:
    from napari_shiftseg.cli import main as shiftseg
    from napari_shiftseg.imaging.classical import otsu_watershed
    from napari_shiftseg.inference.evaluate import format_scores, model_method, score_methods
    from napari_shiftseg.network.modelio import load_bundled, load_model
    from napari_shiftseg.synthetic import synth

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--steps", type=int, default=1000, help="steps of both trained runs")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="shiftseg-finetune-3d-"))
    for scene in args.scenes:
        radius, seeds = SCENES[scene]
        pairs = [synth.nuclei(SHAPE, seed=s, radius=radius, **APPEARANCE) for s in seeds]
        tifffile.imwrite(work / f"{scene}.tif", pairs[0][0])
        tifffile.imwrite(work / f"{scene}_labels.tif", pairs[0][1])
        print(f"scene {scene}: train seed {seeds[0]} ({pairs[0][1].max()} nuclei), "
              f"test seeds {seeds[1:]}", flush=True)
        methods = {"bundled 3D as is": model_method(load_bundled(3)), "Otsu + watershed": otsu_watershed}
        for run, extra in (("new", ["--init", "none", "--lr", "1e-3"]), ("default", [])):
            out = work / f"{scene}_{run}.safetensors"
            start = time.perf_counter()
            code = shiftseg(["train", "--image", str(work / f"{scene}.tif"), "--labels",
                             str(work / f"{scene}_labels.tif"), "--steps", str(args.steps),
                             "--quiet", "-o", str(out), *extra])
            seconds = time.perf_counter() - start
            model = load_model(out)
            print(f"{run}: exit {code}, {seconds:.0f} s, l = {model.geometry.levels}, "
                  f"best step {model.meta.get('validation', {}).get('best_step')}", flush=True)
            methods[f"{run} ({seconds:.0f} s)"] = model_method(model)
        test = [(f"seed {s}", image, labels) for s, (image, labels) in zip(seeds[1:], pairs[1:])]
        rows, summary = score_methods(test, methods)
        print(format_scores(rows, summary, title=f"scene {scene}: held-out volumes"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
