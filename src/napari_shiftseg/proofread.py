"""Proofreading: split one object by re-clustering its embeddings, merge several into one.

Both work on in-memory label images (a napari layer's data) and return a new array; the
caller decides whether to replace the layer. A split looks again at what the network said
about the object's pixels: mean-shift on its embeddings alone with a smaller bandwidth, then
connected pieces. Two nuclei that the global bandwidth merged usually have two embedding
modes; a nucleus that really is one object has one, and then nothing changes (and the caller
is told so).
"""

from __future__ import annotations

import numpy as np

from ._errors import ShiftSegError

__all__ = ["merge_objects", "split_object"]


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShiftSegError(f"labels must hold whole numbers, got data type {labels.dtype}")
    return labels


def merge_objects(labels, ids) -> tuple[np.ndarray, int]:
    """All objects in ``ids`` become one, keeping the smallest id. Returns (labels, kept id)."""
    labels = _check_labels(labels)
    ids = sorted({int(i) for i in ids})
    if len(ids) < 2 or ids[0] <= 0:
        raise ShiftSegError(f"name at least two object ids (> 0) to merge, got {ids}")
    present = set(np.unique(labels[np.isin(labels, ids)]).tolist())
    missing = [i for i in ids if i not in present]
    if missing:
        raise ShiftSegError(f"object(s) {missing} are not in the labels")
    out = labels.copy()
    out[np.isin(out, ids[1:])] = ids[0]
    return out, ids[0]


def split_object(labels, embeddings, object_id: int, bandwidth: float, min_size: int = 1,
                 seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Split object ``object_id`` by mean-shift on its own embeddings.

    Parameters
    ----------
    labels : array (*spatial) of int
    embeddings : array (E, *spatial)
        The embeddings the labels came from (foreground channel excluded), on the same grid.
    bandwidth : float
        Mean-shift bandwidth for this object; smaller than the one that merged it.
    min_size : int
        Pieces smaller than this join the piece they touch most (or stay with the object).

    Returns
    -------
    (labels, ids)
        A new label image and the ids of the pieces (the first is ``object_id``); one id if
        the object has a single embedding mode at this bandwidth.
    """
    from scipy import ndimage as ndi

    from .meanshift import assign_to_modes, mean_shift

    labels = _check_labels(labels)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[1:] != labels.shape:
        raise ShiftSegError(f"the embeddings (spatial shape {embeddings.shape[1:]}) must lie on the "
                            f"labels' grid (shape {labels.shape})")
    if not bandwidth > 0:
        raise ShiftSegError(f"the bandwidth must be positive, got {bandwidth}")
    mask = labels == int(object_id)
    if object_id <= 0 or not mask.any():
        raise ShiftSegError(f"object {object_id} is not in the labels")
    points = embeddings[:, mask].T
    modes = mean_shift(points, bandwidth, seed=seed)
    clusters = np.zeros(labels.shape, np.int32)
    clusters[mask] = assign_to_modes(points, modes)
    pieces = np.zeros(labels.shape, np.int32)
    count = 0
    for cluster in range(1, len(modes) + 1):
        part, n = ndi.label(clusters == cluster)
        pieces[part > 0] = part[part > 0] + count
        count += n
    pieces = _absorb_small(pieces, count, min_size)
    ids = [p for p in np.unique(pieces[mask]).tolist() if p > 0]
    out = labels.copy()
    next_id = int(labels.max()) + 1
    new_ids = [int(object_id)]
    # The largest piece keeps the object's id: what the user selected stays mostly in place.
    sizes = {p: int((pieces == p).sum()) for p in ids}
    for p in sorted(ids, key=lambda p: -sizes[p])[1:]:
        out[pieces == p] = next_id
        new_ids.append(next_id)
        next_id += 1
    return out, new_ids


def _absorb_small(pieces: np.ndarray, count: int, min_size: int) -> np.ndarray:
    """Pieces below ``min_size`` join the neighbouring piece they share most border with."""
    from scipy import ndimage as ndi

    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    for small in np.argsort(sizes):
        if small == 0 or sizes[small] == 0 or sizes[small] >= min_size:
            continue
        ring = ndi.binary_dilation(pieces == small) & (pieces != small) & (pieces > 0)
        if ring.any():
            target = np.bincount(pieces[ring]).argmax()
            pieces[pieces == small] = target
            sizes[target] += sizes[small]
            sizes[small] = 0
    return pieces
