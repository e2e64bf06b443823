"""Proofreading: split by re-clustering one object's embeddings, merge by ids."""

import numpy as np
import pytest

from napari_shiftseg._errors import ShiftSegError
from napari_shiftseg.proofread import merge_objects, split_object


def _merged_pair():
    """Two touching 6x6 nuclei labelled as one object (3), with two embedding modes."""
    labels = np.zeros((12, 20), np.int32)
    labels[3:9, 2:14] = 3
    labels[0:2, 0:2] = 1
    emb = np.zeros((2, 12, 20), np.float32)
    emb[0, :, 8:] = 4.0                       # the right nucleus sits 4 units away
    emb += np.random.default_rng(0).normal(0, 0.1, emb.shape).astype(np.float32)
    return labels, emb


def test_split_separates_two_embedding_modes():
    labels, emb = _merged_pair()
    out, ids = split_object(labels, emb, 3, bandwidth=1.0)
    assert len(ids) == 2 and ids[0] == 3 and ids[1] == 4          # a fresh id for the new piece
    left, right = set(np.unique(out[3:9, 2:8])), set(np.unique(out[3:9, 8:14]))
    assert len(left) == len(right) == 1 and left | right == {3, 4}
    assert (out == 1).sum() == 4 and (labels == 3).sum() == 72      # others untouched, input too


def test_split_keeps_an_object_with_one_mode():
    labels, emb = _merged_pair()
    out, ids = split_object(labels, emb, 3, bandwidth=10.0)         # wider than the mode distance
    assert ids == [3]
    np.testing.assert_array_equal(out, labels)


def test_split_absorbs_tiny_pieces():
    labels, emb = _merged_pair()
    emb[0, 4, 3] = -5.0                                              # one outlier pixel
    out, ids = split_object(labels, emb, 3, bandwidth=1.0, min_size=3)
    assert len(ids) == 2 and out[4, 3] == out[4, 2] == out[5, 3] != out[4, 10]


def test_merge_keeps_the_smallest_id():
    labels, _ = _merged_pair()
    labels[10:12, 15:20] = 7
    out, kept = merge_objects(labels, [7, 3])
    assert kept == 3 and not (out == 7).any() and (out == 3).sum() == 72 + 10


@pytest.mark.parametrize("call, message", [
    (lambda l, e: merge_objects(l, [3]), "at least two object ids"),
    (lambda l, e: merge_objects(l, [3, 9]), r"object\(s\) \[9\] are not in the labels"),
    (lambda l, e: split_object(l, e, 9, 1.0), "object 9 is not in the labels"),
    (lambda l, e: split_object(l, e[:, :5], 3, 1.0), "must lie on the labels' grid"),
    (lambda l, e: split_object(l, e, 3, 0.0), "bandwidth must be positive"),
])
def test_bad_requests(call, message):
    labels, emb = _merged_pair()
    with pytest.raises(ShiftSegError, match=message):
        call(labels, emb)
