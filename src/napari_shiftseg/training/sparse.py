"""Sparse annotations: labels that are complete only in part of an image.

A biologist rarely paints every nucleus of a volume. Trained as they are, the unpainted nuclei
would be taught as background. Instead, the pixels outside the *annotated region* carry the
label :data:`UNANNOTATED` (-1) and enter no loss term: the discriminative loss ignores them like
background, and the foreground loss is averaged over annotated pixels only. Training windows
are drawn around annotated pixels, and held-out scoring ignores predictions there.

The annotated region is either given (a mask, e.g. a painted or drawn region in napari,
``--mask`` in the CLI) or, with ``"painted"``, the painted objects plus a margin of background
around them: there the user has, by painting an object, also said where it ends.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..imaging.metrics import median_diameter
from ..util._errors import ShiftSegError

__all__ = ["UNANNOTATED", "PAINTED", "annotated_region", "mark_unannotated", "painted_margin", "is_sparse"]

#: Label of pixels outside the annotated region.
UNANNOTATED = -1

#: ``annotated="painted"``: the painted objects plus :func:`painted_margin` around them.
PAINTED = "painted"


def painted_margin(labels: np.ndarray) -> int:
    """Background margin (pixels) trusted around painted objects: half a median diameter, >= 2."""
    return max(2, int(round(median_diameter([labels]) / 2)))


def annotated_region(labels: np.ndarray, annotated) -> np.ndarray | None:
    """Boolean mask of the pixels whose labels are complete (None: the whole image).

    ``annotated`` is None (labels complete everywhere), :data:`PAINTED`, or an array of the
    labels' shape whose non-zero pixels are the annotated region.
    """
    if annotated is None:
        return None
    if isinstance(annotated, str):
        if annotated != PAINTED:
            raise ShiftSegError(f"annotated must be a mask or {PAINTED!r}, got {annotated!r}")
        painted = labels > 0
        return ndimage.binary_dilation(painted, iterations=painted_margin(labels))
    mask = np.asarray(annotated)
    if mask.shape != labels.shape:
        raise ShiftSegError(f"the annotated-region mask has shape {mask.shape} but the labels have "
                            f"shape {labels.shape}; they must match pixel for pixel")
    if mask.dtype.kind not in "biuf":
        raise ShiftSegError(f"the annotated-region mask must be numbers or booleans, got {mask.dtype}")
    mask = mask != 0
    if not (mask & (labels > 0)).any():
        raise ShiftSegError("no painted object lies inside the annotated region; paint objects "
                            "inside it (or draw the region around them)")
    return mask


def mark_unannotated(labels: np.ndarray, annotated) -> np.ndarray:
    """int32 labels with :data:`UNANNOTATED` outside the annotated region (a copy if changed).

    Objects that cross the region's border keep all their pixels: a painted object is complete.
    """
    region = annotated_region(labels, annotated)
    if region is None:
        return labels
    out = labels.astype(np.int32, copy=True)
    out[~region & (labels == 0)] = UNANNOTATED
    return out


def is_sparse(labels: np.ndarray) -> bool:
    """Whether some pixels are outside the annotated region."""
    return bool((np.asarray(labels) < 0).any())
