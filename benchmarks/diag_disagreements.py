"""Diagnostics behind two findings of RESULTS.md section 7 (seventh session); prints tables.

``bbbc-conventions``: how much of a method's disagreement with the BBBC007 reference comes from
how that reference was made. On BBBC007 train + val (never the test split), AP@0.5 as is and
after ignoring (a) reference objects under 15 px (specks no nucleus segmentation keeps) and
(b) predicted objects lying >= 80 % in the reference's background (dim nuclei its threshold left
out), for the bundled 2D model and Otsu + watershed.

``bbbc-misses``: every reference nucleus (>= 15 px) the bundled 2D model does not match at IoU > 0.5,
drawn side by side (the reference's outline of it in yellow, its other outlines in red; the
model's outlines in green) into one PNG, numbered in the order the table prints them, so that
each disagreement can be judged by eye; ``--extra`` draws the model's unmatched objects instead
(reference left, model right, the object in yellow).

``merges-3d``: which touching nuclei a 3D model merges, on the small-nucleus dev volume
(seed 3·10⁹ + 10; never a test seed), binned by how much the pair overlaps (centre distance over
the sum of the equivalent radii), and how many nuclei it misses by brightness quartile.

Run: ``python benchmarks/diag_disagreements.py bbbc-conventions`` (needs
``python scripts/bbbc007.py`` once), ``... bbbc-misses --split train,val --out DIR`` or
``... merges-3d [--model M ...]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_shiftseg.imaging.classical import otsu_watershed
from napari_shiftseg.imaging.metrics import evaluate
from napari_shiftseg.inference.evaluate import segment_array
from napari_shiftseg.inference.postprocess import block_contacts
from napari_shiftseg.network.modelio import load_bundled, load_model
from napari_shiftseg.synthetic import synth

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


def outlines(labels) -> np.ndarray:
    """Pixels where ``labels`` changes within a 3×3 neighbourhood, on an object."""
    upper = ndimage.grey_dilation(labels, 3)
    return (upper != ndimage.grey_erosion(labels, 3)) & (upper > 0)


def miss_tiles(image, gt, pred, extra: bool = False, half: int = 24):
    """(tile, id, area, best IoU) for each reference object >= SPECK px that no predicted object
    matches at IoU > 0.5 (``extra``: each predicted object no reference object matches): the
    reference's outlines beside the model's, on the image, the object's own outline in yellow."""
    overlap = np.zeros((gt.max() + 1, pred.max() + 1), np.int64)
    np.add.at(overlap, (gt.ravel(), pred.ravel()), 1)
    if extra:
        overlap = overlap.T
    area, other = overlap.sum(1), overlap.sum(0)
    iou = overlap[1:, 1:] / np.maximum(area[1:, None] + other[None, 1:] - overlap[1:, 1:], 1)
    grey = np.pad(np.clip(image / np.percentile(image, 99.8), 0, 1) ** 0.5, half)
    own, theirs = (np.pad(pred, half), np.pad(gt, half)) if extra else (np.pad(gt, half), np.pad(pred, half))
    floor = 1 if extra else SPECK
    for i in np.flatnonzero((area[1:] >= floor) & ~(iou > 0.5).any(axis=1)) + 1:
        cy, cx = (int(c) for c in ndimage.center_of_mass(own == i))  # on the padded grid
        window = (slice(cy - half, cy + half), slice(cx - half, cx + half))
        mine, other_side = (np.repeat(grey[window][..., None], 3, axis=2) for _ in range(2))
        mine[outlines(own[window])] = (0, 1, 0) if extra else (1, 0, 0)
        mine[outlines(np.where(own[window] == i, i, 0))] = (1, 1, 0)
        other_side[outlines(theirs[window])] = (1, 0, 0) if extra else (0, 1, 0)
        pair = (other_side, mine) if extra else (mine, other_side)
        tile = np.concatenate([pair[0], np.ones((2 * half, 2, 3)), pair[1]], axis=1)
        yield tile, int(i), int(area[i]), float(iou[i - 1].max())


def bbbc_misses(splits, out: Path, extra: bool = False, columns: int = 5, zoom: int = 2) -> None:
    from PIL import Image, ImageDraw

    sys.path.insert(0, str(ROOT / "scripts"))
    import bbbc007

    model = load_bundled(2)
    out.mkdir(parents=True, exist_ok=True)
    tiles = []
    whose = "model" if extra else "reference"
    print(f"| # | image | {whose} id | area (px) | best IoU |\n|---|---|---|---|---|")
    for split in splits:
        for name, image, gt in bbbc007.load(split):
            for tile, g, area, best in miss_tiles(image, gt, segment_array(image, model), extra):
                print(f"| {len(tiles)} | {name} | {g} | {area} | {best:.2f} |")
                tiles.append(tile)
    if not tiles:
        return
    height, width = tiles[0].shape[0] + 4, tiles[0].shape[1] + 6
    rows = -(-len(tiles) // columns)
    canvas = np.ones((rows * height, columns * width, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * height:r * height + tile.shape[0], c * width:c * width + tile.shape[1]] = tile
    picture = Image.fromarray((canvas * 255).astype(np.uint8)).resize(
        (canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for i in range(len(tiles)):
        r, c = divmod(i, columns)
        draw.text((c * width * zoom + 2, r * height * zoom + 1), str(i), fill=(255, 255, 0))
    path = out / f"bbbc007_{'extra' if extra else 'misses'}_{'_'.join(splits)}.png"
    picture.save(path)
    print(f"\n{len(tiles)} {whose} objects unmatched; drawn in {path}")


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
    parser.add_argument("which", choices=("bbbc-conventions", "bbbc-misses", "merges-3d"))
    parser.add_argument("--model", nargs="*", default=[], help="merges-3d: more 3D model files")
    parser.add_argument("--split", default="train,val",
                        help="bbbc-misses: comma-separated BBBC007 splits (default train,val)")
    parser.add_argument("--out", type=Path, default=Path("."), help="bbbc-misses: output folder")
    parser.add_argument("--extra", action="store_true",
                        help="bbbc-misses: draw the model's unmatched objects instead")
    args = parser.parse_args(argv)
    if args.which == "bbbc-conventions":
        bbbc_conventions()
    elif args.which == "bbbc-misses":
        bbbc_misses(args.split.split(","), args.out, args.extra)
    else:
        merges_3d(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
