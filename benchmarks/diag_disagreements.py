"""Diagnostics behind two findings of RESULTS.md section 7 (seventh session); prints tables.

``bbbc-conventions``: how much of a method's disagreement with the BBBC007 reference comes from
how that reference was made. On BBBC007 train + val (never the test split), AP@0.5 as is and
after ignoring (a) reference objects under 15 px (specks no nucleus segmentation keeps) and
(b) predicted objects lying >= 80 % in the reference's background (dim nuclei its threshold left
out), for the bundled 2D model and Otsu + watershed.

``merges-3d``: which touching nuclei a 3D model merges, on the small-nucleus dev volume
(seed 3·10⁹ + 10; never a test seed), binned by how much the pair overlaps (centre distance over
the sum of the equivalent radii), and how many nuclei it misses by brightness quartile.

Run: ``python benchmarks/diag_disagreements.py bbbc-conventions`` (needs
``python scripts/bbbc007.py`` once) or ``... merges-3d [--model M ...]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_shiftseg import synth
from napari_shiftseg.classical import otsu_watershed
from napari_shiftseg.evaluate import segment_array
from napari_shiftseg.metrics import evaluate
from napari_shiftseg.modelio import load_bundled, load_model
from napari_shiftseg.postprocess import block_contacts

ROOT = Path(__file__).resolve().parents[1]
SPECK = 15  # px: reference objects below this are specks
IN_BACKGROUND = 0.8  # share of a predicted object in the reference's background


def ignoring_conventions(gt, pred):
    """(gt, pred, n specks, n objects in background) with both kinds removed."""
    areas = np.bincount(gt.ravel())
    specks = np.flatnonzero(areas < SPECK)
    specks = specks[specks > 0]
    size = np.bincount(pred.ravel())
    in_bg = np.bincount(pred[gt == 0].ravel(), minlength=size.size)
    stray = np.flatnonzero((in_bg >= IN_BACKGROUND * size) & (size > 0))
    stray = stray[stray > 0]
    return (np.where(np.isin(gt, specks), 0, gt), np.where(np.isin(pred, stray), 0, pred),
            specks.size, stray.size)


def bbbc_conventions() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bbbc007

    model = load_bundled(2)
    methods = {"bundled 2D": lambda image: segment_array(image, model), "otsu+watershed": otsu_watershed}
    scores = {name: ([], [], 0, 0) for name in methods}
    for split in ("train", "val"):
        for _, image, gt in bbbc007.load(split):
            for name, method in methods.items():
                pred = method(image)
                as_is, ignored, specks, stray = scores[name]
                g, p, n_specks, n_stray = ignoring_conventions(gt, pred)
                as_is.append(evaluate(gt, pred)["ap@0.5"])
                ignored.append(evaluate(g, p)["ap@0.5"])
                scores[name] = (as_is, ignored, specks + n_specks, stray + n_stray)
    print(f"| method | AP@0.5 as is | without specks < {SPECK} px and objects in the reference's "
          "background | specks | objects in background |\n|---|---|---|---|---|")
    for name, (as_is, ignored, specks, stray) in scores.items():
        print(f"| {name} | {np.mean(as_is):.3f} | {np.mean(ignored):.3f} | {specks} | {stray} |")


def majority_label(gt, pred) -> np.ndarray:
    """Per gt id (index), the predicted label covering most of it (0: mostly background)."""
    overlap = np.zeros((gt.max() + 1, pred.max() + 1), np.int64)
    np.add.at(overlap, (gt.ravel(), pred.ravel()), 1)
    return overlap.argmax(axis=1)


def merges_3d(model_paths) -> None:
    image, gt = synth.nuclei((64, 128, 128), seed=3_000_000_010, radius=(4, 6))
    ids = np.arange(1, gt.max() + 1)
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(gt), gt, ids))
    radii = (3 * np.bincount(gt.ravel())[1:] / (4 * np.pi)) ** (1 / 3)
    brightness = ndimage.mean(image, gt, ids)
    pairs = block_contacts(gt)[:, :2]
    i, j = pairs[:, 0] - 1, pairs[:, 1] - 1
    overlap = np.linalg.norm(centres[i] - centres[j], axis=1) / (radii[i] + radii[j])
    bins = (0.0, 0.7, 0.8, 0.9, np.inf)
    totals = np.histogram(overlap, bins)[0]
    quartiles = np.quantile(brightness, [0.25, 0.5, 0.75])
    print(f"dev volume 3·10⁹+10: {ids.size} nuclei, {len(pairs)} touching pairs; merged per bin "
          "of centre distance / summed radii; missed nuclei per brightness quartile (dim first)")
    print("| model | AP@0.5 | " + " | ".join(f"{lo}-{hi} ({n})" for lo, hi, n in
                                           zip(bins[:-1], bins[1:], totals))
          + " | missed |\n|---|---|" + "---|" * (len(totals) + 1))
    models = {"bundled 3D": load_bundled(3)} | {Path(p).name: load_model(p) for p in model_paths}
    for name, model in models.items():
        pred = segment_array(image, model)
        majority = majority_label(gt, pred)
        a, b = majority[pairs[:, 0]], majority[pairs[:, 1]]
        merged = np.histogram(overlap[(a > 0) & (a == b)], bins)[0]
        missed = ids[majority[1:] == 0]
        per_quartile = np.histogram(brightness[missed - 1], [-np.inf, *quartiles, np.inf])[0]
        print(f"| {name} | {evaluate(gt, pred)['ap@0.5']:.3f} | "
              + " | ".join(f"{m} ({m / max(n, 1):.0%})" for m, n in zip(merged, totals))
              + f" | {missed.size} {per_quartile.tolist()} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("bbbc-conventions", "merges-3d"))
    parser.add_argument("--model", nargs="*", default=[], help="merges-3d: more 3D model files")
    args = parser.parse_args(argv)
    if args.which == "bbbc-conventions":
        bbbc_conventions()
    else:
        merges_3d(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
