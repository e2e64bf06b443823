"""Instance segmentation metrics for 2D and 3D label images.

Label images hold non-negative integers, 0 is background; ids need not be consecutive and any
integer dtype works. Every metric is invariant to relabelling: where a rule needs a tie-break
it uses the object's first pixel in raster order, never its id.

* :func:`contingency` - sparse overlap counts between ground-truth and predicted objects.
* :func:`match` - optimal one-to-one matching at an IoU threshold (TP, FP, FN, precision, ...).
* :func:`average_precision` - ``AP = TP / (TP + FP + FN)`` per IoU threshold, the convention of
  the Data Science Bowl 2018 and of stardist (sometimes called "accuracy"); the paper's AP50 is
  ``average_precision(gt, pred, (0.5,))``. It is not the area under a precision-recall curve.
* :func:`false_splits`, :func:`false_merges` - over- and under-segmentation counts.
* :func:`evaluate` - all of the above in one dict.

The definitions are the paper's and poster's (and those of the DSB 2018 / stardist matching):

* a ground-truth and a predicted object *match* when ``IoU > t`` (strictly; at ``t = 1`` only a
  perfect match), one to one;
* a *false split* is a ground-truth object cut into two or more predicted objects (each
  predicted object counts for the ground-truth object it overlaps most): one object cut in three
  counts 1, as the poster counts split objects, not surplus fragments;
* a *false merge* is a predicted object that covers two or more ground-truth objects (each
  ground-truth object counts for the predicted object it overlaps most).

Before 2026-12-01 the project matched at ``IoU >= t`` and counted surplus fragments (a cut in
three counted 2); numbers recorded before then in benchmarks/RESULTS.md ran 1.4-2.2x higher.

Ratios of 0 / 0 (no objects anywhere to count) are reported as 1.0: there was nothing to get
wrong. The mean IoU of an empty set of matches is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_shiftseg.util._errors import ShiftSegError

__all__ = [
    "Contingency",
    "MatchResult",
    "contingency",
    "match",
    "average_precision",
    "false_splits",
    "false_merges",
    "evaluate",
    "median_object_size",
    "median_diameter",
]


# --------------------------------------------------------------------------- validation


def _check_labels(labels, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ShiftSegError(
            f"{name} has dtype {labels.dtype}; label images must have an integer dtype"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ShiftSegError(
            f"{name} contains the negative label {labels.min()}; "
            "labels must be >= 0 (0 = background)"
        )
    return labels


def _check_pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _check_labels(gt, "gt"), _check_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ShiftSegError(
            f"gt shape {gt.shape} and pred shape {pred.shape} differ; they must be equal"
        )
    return gt, pred


def _check_thresholds(thresholds) -> tuple[float, ...]:
    values = tuple(np.atleast_1d(np.asarray(thresholds, dtype=object)).tolist())
    ok = len(values) > 0 and all(
        isinstance(t, Real) and not isinstance(t, bool) and 0 < float(t) <= 1 for t in values
    )
    if not ok:
        raise ShiftSegError(
            f"thresholds {thresholds!r} must be one or more IoU thresholds in (0, 1]"
        )
    return tuple(float(t) for t in values)


def _ratio(numerator: int, denominator: int) -> float:
    # 0 / 0 means there was nothing to find and nothing was found: a perfect score.
    return 1.0 if denominator == 0 else numerator / denominator


# --------------------------------------------------------------------------- contingency


@dataclass(frozen=True, eq=False)
class Contingency:
    """Sparse overlap table between ground-truth and predicted foreground objects.

    Attributes
    ----------
    gt_ids, pred_ids : numpy.ndarray
        Foreground ids present in each image, ascending (background 0 excluded).
    gt_sizes, pred_sizes : numpy.ndarray of int64
        Pixel count of each object.
    gt_first, pred_first : numpy.ndarray of int64
        Flat (raster-order) index of each object's first pixel: an id-independent tie-break.
    pair_gt, pair_pred : numpy.ndarray of int64
        For every overlapping (gt, pred) pair, indices into ``gt_ids`` and ``pred_ids``.
    overlap : numpy.ndarray of int64
        Number of pixels shared by each pair (always > 0).
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    gt_first: np.ndarray
    pred_first: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    overlap: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """Intersection over union of every overlapping pair."""
        union = self.gt_sizes[self.pair_gt] + self.pred_sizes[self.pair_pred] - self.overlap
        return self.overlap / union


def _objects(flat: np.ndarray):
    """Ids, first-pixel index, per-pixel object index and size; background dropped from ids.

    Returns the per-pixel index with background mapped to -1.
    """
    ids, first, inverse, sizes = np.unique(
        flat, return_index=True, return_inverse=True, return_counts=True
    )
    # ids are sorted and non-negative, so background can only be the first entry.
    skip = 1 if ids.size and ids[0] == 0 else 0
    index = inverse.reshape(-1).astype(np.int64) - skip
    return ids[skip:], first[skip:].astype(np.int64), index, sizes[skip:].astype(np.int64)


def contingency(gt, pred) -> Contingency:
    """Overlap counts between every pair of ground-truth and predicted objects that touch.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of equal shape (any dimension); 0 is background.

    Returns
    -------
    Contingency
        Only pairs that share at least one pixel are listed; background is ignored.

    Raises
    ------
    ShiftSegError
        If the shapes differ or a label image is not a non-negative integer array.
    """
    gt, pred = _check_pair(gt, pred)
    gt_ids, gt_first, gt_index, gt_sizes = _objects(gt.reshape(-1))
    pred_ids, pred_first, pred_index, pred_sizes = _objects(pred.reshape(-1))
    both = (gt_index >= 0) & (pred_index >= 0)
    # One integer per (gt, pred) pixel pair, so a single np.unique counts every overlap.
    n_pred = max(pred_ids.size, 1)
    codes, overlap = np.unique(gt_index[both] * n_pred + pred_index[both], return_counts=True)
    pair_gt, pair_pred = np.divmod(codes, n_pred)
    return Contingency(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        gt_sizes=gt_sizes,
        pred_sizes=pred_sizes,
        gt_first=gt_first,
        pred_first=pred_first,
        pair_gt=pair_gt,
        pair_pred=pair_pred,
        overlap=overlap.astype(np.int64),
    )


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Outcome of a one-to-one matching at one IoU threshold.

    Attributes
    ----------
    iou_threshold : float
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched ground-truth objects.
    n_gt, n_pred : int
        Number of ground-truth and predicted objects.
    precision, recall, ap : float
        ``tp / (tp + fp)``, ``tp / (tp + fn)``, ``tp / (tp + fp + fn)`` (1.0 for 0 / 0).
    mean_matched_iou : float
        Mean IoU of the matched pairs (NaN without matches).
    matched_gt_ids, matched_pred_ids, matched_iou : numpy.ndarray
        The matched pairs.
    """

    iou_threshold: float
    tp: int
    fp: int
    fn: int
    n_gt: int
    n_pred: int
    precision: float
    recall: float
    ap: float
    mean_matched_iou: float
    matched_gt_ids: np.ndarray
    matched_pred_ids: np.ndarray
    matched_iou: np.ndarray


def _best_pairs(pair_gt, pair_pred, score) -> np.ndarray:
    """Boolean mask of the candidate pairs in a maximum matching (ties: largest total score).

    The candidate graph splits into connected components that can be matched independently;
    most are a single pair, so the dense assignment problem is only built for the rest.
    """
    chosen = np.zeros(score.size, dtype=bool)
    if score.size == 0:
        return chosen
    n_gt = int(pair_gt.max()) + 1
    n_nodes = n_gt + int(pair_pred.max()) + 1
    graph = coo_matrix((np.ones(score.size), (pair_gt, pair_pred + n_gt)), shape=(n_nodes,) * 2)
    _, node_component = connected_components(graph, directed=False)
    component = node_component[pair_gt]
    pairs_in = np.bincount(component)
    chosen[pairs_in[component] == 1] = True
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.diff(component[order])) + 1
    for group in np.split(order, bounds):
        if group.size > 1:
            chosen[group[_assign(pair_gt[group], pair_pred[group], score[group])]] = True
    return chosen


def _assign(pair_gt, pair_pred, score) -> np.ndarray:
    """Indices (into the given pairs) of a maximum matching of one component."""
    rows, row_of = np.unique(pair_gt, return_inverse=True)
    cols, col_of = np.unique(pair_pred, return_inverse=True)
    # Each match is worth 1; scores only break ties, as their total stays below 0.5 (stardist).
    scale = 2.0 * min(rows.size, cols.size)
    cost = np.zeros((rows.size, cols.size))
    cost[row_of, col_of] = -1.0 - score / scale
    pair_at = np.full(cost.shape, -1)
    pair_at[row_of, col_of] = np.arange(score.size)
    r, c = linear_sum_assignment(cost)
    picked = pair_at[r, c]
    return picked[picked >= 0]


def _match(table: Contingency, iou_threshold: float) -> MatchResult:
    iou = table.iou
    # Strictly above the threshold (the DSB 2018 / poster convention); at 1, a perfect match.
    candidate = iou > iou_threshold if iou_threshold < 1 else iou >= 1
    pair_gt, pair_pred, score = table.pair_gt[candidate], table.pair_pred[candidate], iou[candidate]
    chosen = _best_pairs(pair_gt, pair_pred, score)
    tp = int(chosen.sum())
    n_gt, n_pred = table.gt_ids.size, table.pred_ids.size
    fp, fn = n_pred - tp, n_gt - tp
    return MatchResult(
        iou_threshold=iou_threshold,
        tp=tp,
        fp=fp,
        fn=fn,
        n_gt=n_gt,
        n_pred=n_pred,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        ap=_ratio(tp, tp + fp + fn),
        mean_matched_iou=float(score[chosen].mean()) if tp else float("nan"),
        matched_gt_ids=table.gt_ids[pair_gt[chosen]],
        matched_pred_ids=table.pred_ids[pair_pred[chosen]],
        matched_iou=score[chosen],
    )


def match(gt, pred, iou_threshold: float = 0.5) -> MatchResult:
    """Match ground-truth and predicted objects one to one.

    Only pairs with ``IoU > iou_threshold`` (at 1: ``IoU = 1``) may be matched. Among all one-to-one matchings the
    one with the most pairs is chosen, ties broken by the largest total IoU (as in stardist),
    solved with :func:`scipy.optimize.linear_sum_assignment`. For thresholds of 0.5 and above every
    object has at most one candidate, so the matching is unique.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of equal shape; 0 is background.
    iou_threshold : float
        In (0, 1].

    Returns
    -------
    MatchResult

    Raises
    ------
    ShiftSegError
        On mismatched shapes, non-integer or negative labels, or a bad threshold.
    """
    (threshold,) = _check_thresholds(iou_threshold)
    return _match(contingency(gt, pred), threshold)


def average_precision(gt, pred, thresholds=(0.5,)) -> dict[float, float]:
    """``AP = TP / (TP + FP + FN)`` at each IoU threshold (DSB 2018 / stardist convention).

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of equal shape; 0 is background.
    thresholds : float or sequence of float
        IoU thresholds in (0, 1].

    Returns
    -------
    dict
        ``{threshold: ap}``; 1.0 when both images are empty.
    """
    thresholds = _check_thresholds(thresholds)
    table = contingency(gt, pred)
    return {t: _match(table, t).ap for t in thresholds}


# --------------------------------------------------------------------------- splits and merges


def _many_to_one(src, dst, overlap, dst_first, n_dst) -> int:
    """Assign every ``src`` object to the ``dst`` object it overlaps most; count the ``dst``
    objects that received two or more.

    Ties go to the ``dst`` object whose first pixel comes first in raster order.
    """
    if src.size == 0:
        return 0
    order = np.lexsort((dst_first[dst], -overlap, src))
    src, dst = src[order], dst[order]
    first_of_src = np.ones(src.size, dtype=bool)
    first_of_src[1:] = src[1:] != src[:-1]
    assigned = np.bincount(dst[first_of_src], minlength=n_dst)
    return int(np.count_nonzero(assigned >= 2))


def _false_splits(table: Contingency) -> int:
    return _many_to_one(
        table.pair_pred, table.pair_gt, table.overlap, table.gt_first, table.gt_ids.size
    )


def _false_merges(table: Contingency) -> int:
    return _many_to_one(
        table.pair_gt, table.pair_pred, table.overlap, table.pred_first, table.pred_ids.size
    )


def false_splits(gt, pred) -> int:
    """Number of ground-truth objects cut into two or more predicted objects (over-segmentation).

    Every predicted object that overlaps any ground-truth object is assigned to the one it
    shares most pixels with (background is ignored; ties go to the ground-truth object whose
    first pixel comes first in raster order). The result counts the ground-truth objects that
    received two or more: one object cut in three counts 1 (the poster's definition).
    Predictions on pure background are false positives, not splits.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of equal shape; 0 is background.

    Returns
    -------
    int
    """
    return _false_splits(contingency(gt, pred))


def false_merges(gt, pred) -> int:
    """Number of predicted objects that cover two or more ground-truth objects (under-segmentation).

    The mirror image of :func:`false_splits`: every ground-truth object that overlaps any
    predicted object is assigned to the one it shares most pixels with (ties: first pixel in
    raster order), and the result counts the predicted objects that received two or more:
    three objects merged into one count 1.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of equal shape; 0 is background.

    Returns
    -------
    int
    """
    return _false_merges(contingency(gt, pred))


def evaluate(gt, pred, thresholds=(0.5,), *, recall: bool = False) -> dict[str, float | int]:
    """All metrics at once (the overlap table is computed once).

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of equal shape; 0 is background.
    thresholds : float or sequence of float
        IoU thresholds in (0, 1] for the AP values.
    recall : bool
        Also report the recall (matched / ground-truth objects) at every threshold.

    Returns
    -------
    dict
        ``"ap@<t>"`` for every threshold (e.g. ``"ap@0.5"``), ``"false_splits"``,
        ``"false_merges"``, ``"n_gt"``, ``"n_pred"``; with ``recall=True`` also
        ``"recall@<t>"`` for every threshold.
    """
    thresholds = _check_thresholds(thresholds)
    table = contingency(gt, pred)
    matches = [_match(table, t) for t in thresholds]
    result: dict[str, float | int] = {f"ap@{m.iou_threshold:g}": m.ap for m in matches}
    if recall:
        result.update({f"recall@{m.iou_threshold:g}": m.recall for m in matches})
    result["false_splits"] = _false_splits(table)
    result["false_merges"] = _false_merges(table)
    result["n_gt"] = int(table.gt_ids.size)
    result["n_pred"] = int(table.pred_ids.size)
    return result


# --------------------------------------------------------------------------- object sizes


def median_object_size(labels_list) -> float:
    """Median object size (pixels / voxels) over some label images (0 if there are none)."""
    sizes = [np.bincount(np.maximum(np.asarray(lab), 0).ravel().astype(np.int64))[1:]
             for lab in labels_list]
    all_sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    all_sizes = all_sizes[all_sizes > 0]
    return float(np.median(all_sizes)) if all_sizes.size else 0.0


def median_diameter(labels_list) -> float:
    """Median equivalent diameter (voxels) of the objects in some label images (0 if none)."""
    volume = median_object_size(labels_list)
    if not volume:
        return 0.0
    ndim = np.asarray(labels_list[0]).ndim
    # Diameter of the disk / ball of that area / volume.
    return 2 * (volume / np.pi) ** 0.5 if ndim == 2 else 2 * (3 * volume / (4 * np.pi)) ** (1 / 3)
