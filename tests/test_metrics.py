"""Tests for the instance segmentation metrics."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_shiftseg.imaging import metrics
from napari_shiftseg.synthetic import synth
from napari_shiftseg.util._errors import ShiftSegError

small_labels = arrays(np.int64, (5, 6), elements=st.integers(0, 4))


@pytest.fixture(scope="module")
def disks():
    return synth.random_objects((96, 96), n_objects=12, seed=3)[1]


def relabel(labels, mapping):
    out = np.zeros(labels.shape, dtype=np.int64)
    for old, new in mapping.items():
        out[labels == old] = new
    return out


# --------------------------------------------------------------------------- reference


def dense_iou(gt, pred):
    gt_ids = [i for i in np.unique(gt) if i]
    pred_ids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(gt_ids), len(pred_ids)))
    for a, i in enumerate(gt_ids):
        for b, j in enumerate(pred_ids):
            inter = np.sum((gt == i) & (pred == j))
            iou[a, b] = inter / np.sum((gt == i) | (pred == j))
    return gt_ids, pred_ids, iou


def brute_force_match(gt, pred, threshold):
    """(number of matches, total IoU) of the best matching, by enumerating all of them."""
    _, _, iou = dense_iou(gt, pred)
    n_gt, n_pred = iou.shape
    best = (0, 0.0)
    for k in range(min(n_gt, n_pred), 0, -1):
        for rows in itertools.combinations(range(n_gt), k):
            for cols in itertools.permutations(range(n_pred), k):
                scores = iou[list(rows), list(cols)]
                if np.all(scores > threshold):
                    best = max(best, (k, float(scores.sum())))
        if best[0]:
            break
    return best


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("ndim", [2, 3])
def test_perfect_prediction(ndim, disks):
    gt = disks if ndim == 2 else synth.lattice((30, 40, 40), 12, radius=4)[1]
    result = metrics.evaluate(gt, gt, thresholds=(0.5, 0.75, 0.9, 1.0))
    n = int(gt.max())
    assert result == {
        "ap@0.5": 1.0,
        "ap@0.75": 1.0,
        "ap@0.9": 1.0,
        "ap@1": 1.0,
        "false_splits": 0,
        "false_merges": 0,
        "n_gt": n,
        "n_pred": n,
    }
    matched = metrics.match(gt, gt)
    assert (matched.tp, matched.fp, matched.fn) == (n, 0, 0)
    assert matched.precision == matched.recall == matched.mean_matched_iou == 1.0


def test_one_object_split_in_two(disks):
    pred = disks.copy()
    obj = disks == 5
    pred[obj & (np.arange(96)[None, :] < np.argwhere(obj)[:, 1].mean())] = 999
    result = metrics.evaluate(disks, pred)
    assert result["false_splits"] == 1 and result["false_merges"] == 0
    assert result["n_pred"] == result["n_gt"] + 1
    # The larger half may still match at IoU > 0.5; either way, exactly one object is lost.
    matched = metrics.match(disks, pred)
    assert matched.tp in (11, 12) and matched.fp == 13 - matched.tp


def test_split_in_three_counts_one_split_object():
    # The poster's definition: split ground-truth objects, not surplus fragments.
    gt = np.zeros((4, 18), dtype=np.uint8)
    gt[:, :9] = 1
    gt[:, 9:] = 2
    pred = np.repeat(np.array([[1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5]]), 4, axis=0)
    assert metrics.false_splits(gt, pred) == 2
    assert metrics.false_merges(pred, gt) == 2
    assert metrics.false_splits(gt[:, :9], pred[:, :9]) == 1


def test_iou_of_exactly_the_threshold_does_not_match():
    # IoU > t, strictly (DSB 2018 / the poster): a half-overlap is not a match at 0.5.
    gt = np.array([[1, 1, 0, 0]])
    pred = np.array([[0, 1, 0, 0]])
    assert metrics.match(gt, pred, 0.5).tp == 0
    assert metrics.match(gt, pred, 0.49).tp == 1
    assert metrics.match(gt, gt, 1.0).tp == 1


def test_two_objects_merged(disks):
    pred = disks.copy()
    pred[disks == 7] = 3
    result = metrics.evaluate(disks, pred)
    assert result["false_merges"] == 1 and result["false_splits"] == 0
    assert result["n_pred"] == result["n_gt"] - 1
    # The merged blob still matches the larger of the two objects.
    assert result["ap@0.5"] == pytest.approx(11 / 12)


def test_background_predictions_are_not_splits(disks):
    pred = disks.copy()
    pred[0:3, 0:3] = 500  # nothing of gt here (random objects keep off the border)
    assert disks[0:3, 0:3].max() == 0
    result = metrics.evaluate(disks, pred)
    assert result["false_splits"] == 0 and result["ap@0.5"] == pytest.approx(12 / 13)


def test_ties_are_broken_by_position_not_id():
    # Pred 1 covers two pixels of gt A and two of gt B; pred 2 covers the rest of A.
    gt = np.array([[1, 1, 1, 2, 2]])
    pred = np.array([[3, 1, 1, 1, 0]])
    flipped = np.array([[2, 2, 2, 1, 1]])
    assert metrics.false_splits(gt, pred) == metrics.false_splits(flipped, pred) == 1


def test_shifted_predictions(disks):
    small_shift = metrics.match(disks, np.roll(disks, 1, axis=1))
    assert small_shift.ap == 1.0 and 0.5 < small_shift.mean_matched_iou < 0.9
    far = metrics.evaluate(disks, np.roll(disks, 7, axis=0))
    assert far["ap@0.5"] == 0.0


def test_empty_images(disks):
    empty = np.zeros_like(disks)
    missed = metrics.match(disks, empty)
    assert (missed.tp, missed.fp, missed.fn, missed.ap, missed.recall) == (0, 0, 12, 0.0, 0.0)
    assert math.isnan(missed.mean_matched_iou)
    assert metrics.average_precision(empty, disks) == {0.5: 0.0}
    assert metrics.evaluate(empty, empty) == {
        "ap@0.5": 1.0,
        "false_splits": 0,
        "false_merges": 0,
        "n_gt": 0,
        "n_pred": 0,
    }


def test_3d_split_and_merge():
    _, gt = synth.lattice((24, 36, 36), 12, radius=4, partial=False)
    pred = gt.copy()
    pred[(gt == 1) & (np.arange(24)[:, None, None] < 6)] = 100  # split sphere 1 across z
    pred[gt == 3] = 2  # merge spheres 2 and 3
    result = metrics.evaluate(gt, pred, thresholds=[0.5, 0.95])
    assert result["false_splits"] == 1 and result["false_merges"] == 1
    assert result["n_gt"] == int(gt.max()) and result["n_pred"] == int(gt.max())


def test_contingency_matches_dense_counts(disks):
    pred = np.roll(disks, (2, -3), axis=(0, 1))
    table = metrics.contingency(disks, pred)
    gt_ids, pred_ids, iou = dense_iou(disks, pred)
    np.testing.assert_array_equal(table.gt_ids, gt_ids)
    np.testing.assert_array_equal(table.pred_ids, pred_ids)
    dense = np.zeros_like(iou)
    dense[table.pair_gt, table.pair_pred] = table.iou
    np.testing.assert_allclose(dense, iou)
    assert np.all(table.overlap > 0)


def test_dtypes_and_threshold_forms(disks):
    as_uint = metrics.evaluate(disks.astype(np.uint16), np.roll(disks, 2, 1).astype(np.uint64))
    as_int = metrics.evaluate(disks, np.roll(disks, 2, 1).astype(np.int8))
    assert as_uint == as_int
    assert metrics.average_precision(disks, disks, 0.5) == {0.5: 1.0}
    assert metrics.evaluate(disks > 0, disks > 0)["n_gt"] == 1


@settings(max_examples=60, deadline=None)
@given(gt=small_labels, pred=small_labels, data=st.data())
def test_relabel_invariance(gt, pred, data):
    def permuted(labels):
        ids = [int(i) for i in np.unique(labels) if i]
        fresh = st.lists(st.integers(1, 2**40), min_size=len(ids), max_size=len(ids), unique=True)
        new = data.draw(fresh)
        return relabel(labels, dict(zip(ids, new)))

    thresholds = (0.25, 0.5, 0.75)
    before = metrics.evaluate(gt, pred, thresholds)
    assert metrics.evaluate(permuted(gt), permuted(pred), thresholds) == before
    a, b = metrics.match(gt, pred, 0.3), metrics.match(permuted(gt), permuted(pred), 0.3)
    assert a.tp == b.tp and np.isclose(a.matched_iou.sum(), b.matched_iou.sum())


@settings(max_examples=80, deadline=None)
@given(gt=small_labels, pred=small_labels, threshold=st.sampled_from([0.1, 0.3, 0.5, 0.7]))
def test_match_equals_brute_force(gt, pred, threshold):
    result = metrics.match(gt, pred, threshold)
    n_matched, total_iou = brute_force_match(gt, pred, threshold)
    assert result.tp == n_matched
    assert result.matched_iou.sum() == pytest.approx(total_iou)
    assert result.fp == result.n_pred - n_matched and result.fn == result.n_gt - n_matched
    assert len(set(result.matched_gt_ids)) == len(set(result.matched_pred_ids)) == n_matched
    assert np.all(result.matched_iou > threshold)


@pytest.mark.parametrize(
    "call",
    [
        lambda: metrics.evaluate(np.zeros((4, 4), int), np.zeros((4, 5), int)),
        lambda: metrics.evaluate(np.zeros((4, 4)), np.zeros((4, 4), int)),
        lambda: metrics.evaluate(-np.ones((4, 4), int), np.zeros((4, 4), int)),
        lambda: metrics.evaluate(np.zeros((4, 4), int), np.zeros((4, 4), int), thresholds=()),
        lambda: metrics.average_precision(np.zeros((4, 4), int), np.zeros((4, 4), int), (0.0,)),
        lambda: metrics.match(np.zeros((4, 4), int), np.zeros((4, 4), int), 1.5),
        lambda: metrics.match(np.zeros((4, 4), int), np.zeros((4, 4), int), "0.5"),
    ],
)
def test_bad_input_raises_shiftseg_error(call):
    with pytest.raises(ShiftSegError):
        call()
