"""One warning line when a result looks like nonsense (issue 24: 977 objects for 10 nuclei).

A finished segmentation is checked against what the run knew before it started: the size of
the nuclei it measured (or was given). Two signs of a run gone wrong, each with its likely
cause in words a biologist can act on:

* most objects far smaller than the nuclei: the nuclei were cut into pieces (wrong object size
  or voxel size);
* foreground over most of the image: a bright or uneven background, an inverted image, or a
  stain the model was not trained for.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["expected_voxels", "result_warning", "label_statistics", "SMALL_FRACTION", "MAX_FOREGROUND"]

#: Objects whose median size is below this fraction of the expected nucleus are "far smaller".
SMALL_FRACTION = 0.15
#: Fewer objects than this are never called over-split (a few small ones are normal).
MIN_OBJECTS = 10
#: Foreground fractions above this are suspicious (nuclei rarely fill most of a field).
MAX_FOREGROUND = 0.6


def expected_voxels(diameter: float | None, ndim: int, voxel_size=None, planes: int | None = None) -> float | None:
    """Voxels (on the image's own grid) of a nucleus ``diameter`` px across (px of the finest
    in-plane axis); a z step coarser than the pixel holds fewer planes, and a stack of
    ``planes`` planes holds at most that many."""
    if not diameter or diameter <= 0:
        return None
    from ..imaging.sizing import planes_spanned

    if ndim == 2:
        return math.pi / 4 * diameter**2
    depth = planes_spanned(diameter, voxel_size)
    if planes is not None and depth > planes:  # a slab: cut nuclei, a disk through every plane
        return math.pi / 4 * diameter**2 * planes
    return math.pi / 6 * diameter**2 * depth


def result_warning(n_objects: int, median_voxels: float, foreground: float,
                   expected: float | None) -> str:
    """The warning line for a result, or "" when it looks plausible."""
    if foreground > MAX_FOREGROUND:
        return (f"warning: the foreground covers {100 * foreground:.0f} % of the image; likely a "
                "bright or uneven background, an inverted image, or a stain the model was not "
                "trained on")
    if expected and n_objects >= MIN_OBJECTS and median_voxels < SMALL_FRACTION * expected:
        return (f"warning: {n_objects} objects, most far smaller than the nuclei measured "
                f"(median {median_voxels:.0f} voxels against ~{expected:.0f}): the nuclei are "
                "likely cut into pieces; check the voxel size (--voxel-size) and the object size "
                "(--diameter)")
    return ""


def label_statistics(labels, count: int | None = None, compute=None) -> tuple[float, float]:
    """(median object voxels, foreground fraction) of integer ``labels``: numpy, or dask with
    ``count`` (its largest id) so that the counting stays blockwise."""
    import dask.array as da

    if not isinstance(labels, da.Array):
        sizes = np.bincount(np.asarray(labels).ravel().astype(np.int64))
    else:
        sizes = da.bincount(labels.ravel().astype(np.int64), minlength=int(count or 0) + 1)
        sizes = np.asarray(compute(sizes)[0] if compute else sizes.compute())
    objects = sizes[1:][sizes[1:] > 0]
    total = max(int(sizes.sum()), 1)
    return (float(np.median(objects)) if objects.size else 0.0, float(objects.sum()) / total)
