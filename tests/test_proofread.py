"""Proofreading: split by re-clustering one object's embeddings, merge by ids."""

import math

import numpy as np
import pytest
from helpers import MEMORY_BOUND, run_bounded

from napari_shiftseg.inference import proofread
from napari_shiftseg.inference.proofread import merge_objects, split_object
from napari_shiftseg.util._errors import ShiftSegError


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
    assert out.dtype == labels.dtype


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


# --------------------------------------------------------------------------- same result as before

def _reference_split(labels, embeddings, object_id, bandwidth, min_size=1, seed=0):
    """The split as it was before its work was bounded: whole-image passes, one labelling per
    mode, one dilation of the whole image per small piece."""
    from scipy import ndimage as ndi

    from napari_shiftseg.inference.meanshift import assign_to_modes, mean_shift

    mask = labels == object_id
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
    ids = [p for p in np.unique(pieces[mask]).tolist() if p > 0]
    out = labels.copy()
    next_id = int(labels.max()) + 1
    new_ids = [int(object_id)]
    piece_sizes = {p: int((pieces == p).sum()) for p in ids}
    for p in sorted(ids, key=lambda p: -piece_sizes[p])[1:]:
        out[pieces == p] = next_id
        new_ids.append(next_id)
        next_id += 1
    return out, new_ids


def _noisy_three_modes(ndim):
    """A 3-mode object with noisy embeddings (many small fragments at small bandwidths)."""
    shape = (18, 24) if ndim == 2 else (6, 12, 14)
    rng = np.random.default_rng(ndim)
    labels = np.zeros(shape, np.int16)
    labels[(slice(1, -1),) * ndim] = 5
    labels[(0,) * ndim] = 2
    emb = rng.normal(0, 0.5, (3, *shape)).astype(np.float32)
    emb[0, ..., shape[-1] // 2:] += 3.0
    emb[1, ..., : shape[-2] // 2, :] += 3.0
    return labels, emb


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("bandwidth", [2.0, 1.0, 0.5])
@pytest.mark.parametrize("min_size", [1, 4])
def test_split_gives_the_same_result_as_the_unbounded_algorithm(ndim, bandwidth, min_size):
    labels, emb = _noisy_three_modes(ndim)
    expected, expected_ids = _reference_split(labels, emb, 5, bandwidth, min_size)
    out, ids = split_object(labels, emb, 5, bandwidth, min_size=min_size)
    assert ids == expected_ids
    np.testing.assert_array_equal(out, expected)


def test_modes_of_a_large_object_come_from_a_sample(monkeypatch):
    labels, emb = _merged_pair()
    monkeypatch.setattr(proofread, "MAX_MODE_PIXELS", 32)           # the object has 72 pixels
    out, ids = split_object(labels, emb, 3, bandwidth=1.0)
    assert ids == [3, 4]                                            # every pixel still assigned
    assert len(set(np.unique(out[3:9, 2:8]))) == len(set(np.unique(out[3:9, 8:14]))) == 1


# --------------------------------------------------------------------------- ids

# (bad id, what the one-line message says); each is refused by merge and by split alike.
BAD_IDS = [
    (math.nan, r"whole numbers like 4, got nan"),
    (math.inf, r"whole numbers like 4, got inf"),
    ("3", r"whole numbers like 4, got '3'"),
    (None, r"whole numbers like 4, got None"),
    (1.9, r"whole numbers like 4, got 1\.9"),
    (np.float32(3.5), r"whole numbers like 4, got 3\.5"),
    (True, r"whole numbers like 4, got True"),
    (np.bool_(True), r"whole numbers like 4, got True"),
    (1 + 0j, r"whole numbers like 4, got \(1\+0j\)"),
    (0, r"start at 1 \(0 is the background\), got 0"),
    (0.0, r"start at 1 \(0 is the background\), got 0\.0"),
    (-3, r"start at 1 .*got -3"),
    (9, r"9\]? (is|are) not in the labels"),
    (2**70, rf"{2**70}\]? (is|are) not in the labels"),
]


@pytest.mark.parametrize("bad, message", BAD_IDS, ids=[repr(b) for b, _ in BAD_IDS])
def test_merge_refuses_a_bad_id(bad, message):
    labels, _ = _merged_pair()
    with pytest.raises(ShiftSegError, match=message):
        merge_objects(labels, [1, bad])


@pytest.mark.parametrize("bad, message", BAD_IDS, ids=[repr(b) for b, _ in BAD_IDS])
def test_split_refuses_a_bad_id(bad, message):
    labels, emb = _merged_pair()
    with pytest.raises(ShiftSegError, match=message):
        split_object(labels, emb, bad, 1.0)


@pytest.mark.parametrize("same", [3.0, np.int64(3), np.uint8(3), np.float32(3.0), np.array(3)])
def test_integral_ids_of_any_type_are_accepted(same):
    labels, emb = _merged_pair()
    np.testing.assert_array_equal(split_object(labels, emb, same, 1.0)[0],
                                  split_object(labels, emb, 3, 1.0)[0])
    out, kept = merge_objects(labels, [same, 1])
    assert kept == 1 and type(kept) is int
    np.testing.assert_array_equal(out, merge_objects(labels, [3, 1])[0])


@pytest.mark.parametrize("call, message", [
    (lambda l, e: merge_objects(l, [3]), "at least two object ids"),
    (lambda l, e: merge_objects(l, [3, 3.0]), "at least two object ids"),
    (lambda l, e: merge_objects(l, [3, 9]), r"object\(s\) \[9\] are not in the labels"),
    (lambda l, e: merge_objects(l, None), "as a list like"),
    (lambda l, e: merge_objects(l, 3), "as a list like"),
    (lambda l, e: merge_objects(l, "1, 3"), "as a list like"),
    (lambda l, e: split_object(l, e, 9, 1.0), "object 9 is not in the labels"),
    (lambda l, e: split_object(l, e[:, :5], 3, 1.0), "must lie on the labels' grid"),
    (lambda l, e: split_object(l, e, 3, 0.0), "bandwidth must be a number > 0, got 0.0"),
    (lambda l, e: split_object(l, e, 3, math.nan), "bandwidth must be a number > 0, got nan"),
    (lambda l, e: split_object(l, e, 3, "1"), "bandwidth must be a number > 0, got '1'"),
    (lambda l, e: split_object(l, e, 3, 1.0, min_size=-1), "min_size must be a whole number"),
    (lambda l, e: split_object(l.astype(float), e, 3, 1.0), "labels must hold whole numbers"),
])
def test_bad_requests(call, message):
    labels, emb = _merged_pair()
    with pytest.raises(ShiftSegError, match=message):
        call(labels, emb)


# --------------------------------------------------------------------------- ids at the top

@pytest.mark.parametrize("dtype, wider", [(np.uint8, np.uint16), (np.int8, np.int16),
                                          (np.uint16, np.uint32), (np.int32, np.int64)])
def test_split_of_labels_at_their_maximum_widens_the_data_type(dtype, wider):
    labels, emb = _merged_pair()
    top = np.iinfo(dtype).max
    labels = np.where(labels == 3, top, labels).astype(dtype)
    out, ids = split_object(labels, emb, top, 1.0)
    assert out.dtype == wider and ids == [top, top + 1]
    assert set(np.unique(out[3:9, 2:14])) == {top, top + 1} and (out == 1).sum() == 4
    assert labels.dtype == dtype and (labels == top).sum() == 72      # the input is untouched


def test_split_keeps_the_data_type_when_no_new_id_is_needed():
    labels, emb = _merged_pair()
    labels = np.where(labels == 3, 255, labels).astype(np.uint8)
    out, ids = split_object(labels, emb, 255, 10.0)                   # one mode: nothing to add
    assert ids == [255] and out.dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_split_refuses_new_ids_that_no_integer_type_holds(dtype):
    labels, emb = _merged_pair()
    top = int(np.iinfo(dtype).max)
    labels = np.where(labels == 3, np.array(top, dtype), labels.astype(dtype))
    with pytest.raises(ShiftSegError, match=f"needs object id {top + 1}.*renumber the objects"):
        split_object(labels, emb, top, 1.0)


# --------------------------------------------------------------------------- bounded work

def _noise_object(side=64, ndim_embedding=2):
    labels = np.ones((side, side), np.int32)
    emb = np.random.default_rng(0).normal(0, 1, (ndim_embedding, side, side)).astype(np.float32)
    return labels, emb


def test_split_refuses_a_bandwidth_far_below_the_embeddings_spread():
    labels, emb = _noise_object()
    with pytest.raises(ShiftSegError, match=r"the bandwidth 0\.01 is too small for object 1: .*"
                                            r"more than 2000 windows") as err:
        split_object(labels, emb, 1, 0.01)
    suggested = float(str(err.value).split("at least ")[1].split()[0])
    out, ids = split_object(labels, emb, 1, suggested)                  # the suggestion is taken
    assert len(ids) > 1 and set(np.unique(out)) == set(ids)
    with pytest.raises(ShiftSegError, match="too small"):
        split_object(labels, emb, 1, suggested / 1.3)                   # and about the smallest


def test_split_refuses_to_shatter_an_object(monkeypatch):
    labels, emb = _noise_object(side=16)
    monkeypatch.setattr(proofread, "MAX_FRAGMENTS", 5)
    with pytest.raises(ShiftSegError, match=r"at bandwidth 0\.5 object 1 falls apart into \d+ "
                                            r"scattered fragments \(at most 5"):
        split_object(labels, emb, 1, 0.5)


# The case (bandwidth 0.01 on a 512 x 512 object), the suggested smallest bandwidth on
# noisy embeddings (the most work a split accepts), and an ordinary split of that object.
BOUNDED_SPLIT = """
import numpy as np
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.inference.proofread import split_object
labels = np.ones((512, 512), np.uint8)
emb = np.random.default_rng(0).normal(0, 0.2, (3, 512, 512)).astype(np.float32)
emb[0, :, 256:] += 4.0
try:
    split_object(labels, emb, 1, 0.01)
except ShiftSegError as err:
    print("refused:", err)
    floor = float(str(err).split("at least ")[1].split()[0])
try:
    print("at the floor:", len(split_object(labels, emb, 1, floor)[1]), "pieces")
except ShiftSegError as err:
    print("at the floor:", err)
print("ordinary:", split_object(labels, emb, 1, 1.0)[1])
report_peak()
"""


def test_split_of_a_large_object_is_bounded():
    done = run_bounded(BOUNDED_SPLIT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: the bandwidth 0.01 is too small for object 1")
    assert lines[1].startswith("at the floor:")
    assert lines[2] == "ordinary: [1, 2]"
    assert int(lines[-1]) < MEMORY_BOUND >> 20


# --------------------------------------------------------------------------- undo (issue 26)

def test_split_then_undo_restores_the_exact_labels():
    labels, emb = _merged_pair()
    history = proofread.EditHistory()
    out, ids = split_object(labels, emb, 3, bandwidth=1.0)
    patch = history.record(labels, out)
    assert len(ids) == 2 and len(history) == 1
    # The patch is the box of the changed voxels (part of object 3), not a copy of the image.
    assert patch.labels.size < labels.size and set(np.unique(patch.labels)) <= {0, 3}
    restored = history.undo(out)
    np.testing.assert_array_equal(restored, labels)
    assert restored.dtype == labels.dtype and len(history) == 0
    with pytest.raises(ShiftSegError, match="nothing to undo"):
        history.undo(restored)


def test_merge_then_undo_restores_the_exact_labels():
    labels, _ = _merged_pair()
    labels[10:12, 15:20] = 7
    history = proofread.EditHistory()
    merged, kept = merge_objects(labels, [3, 7, 1])
    patch = history.record(labels, merged)
    assert kept == 1 and patch.region == (slice(3, 12), slice(2, 20))  # the box of 3 and 7
    assert history.record(merged, merged.copy()) is None and len(history) == 1  # no change: not kept
    restored = history.undo(merged)
    np.testing.assert_array_equal(restored, labels)
    assert restored.dtype == labels.dtype


def test_undo_of_several_edits_in_order_keeps_hand_edits_outside_the_box():
    labels, emb = _merged_pair()
    labels[10:12, 15:20] = 7
    history = proofread.EditHistory()
    split, ids = split_object(labels, emb, 3, bandwidth=1.0)
    history.record(labels, split)
    merged, _ = merge_objects(split, ids)
    history.record(split, merged)
    merged[10, 15] = 9                                    # a hand edit, outside both boxes
    once = history.undo(merged)
    np.testing.assert_array_equal(once[:9], split[:9])
    twice = history.undo(once)
    expected = labels.copy()
    expected[10, 15] = 9
    np.testing.assert_array_equal(twice, expected)


def test_undo_after_a_split_that_widened_the_type():
    labels = np.zeros((4, 8), np.uint8)
    labels[:, :4], labels[:, 4:], labels[0, 0] = 5, 5, 255
    emb = np.zeros((1, 4, 8), np.float32)
    emb[0, :, 4:] = 10.0
    history = proofread.EditHistory()
    out, ids = split_object(labels, emb, 5, bandwidth=1.0)
    assert out.dtype == np.uint16 and ids[1] == 256
    history.record(labels, out)
    restored = history.undo(out)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, labels)


def test_history_is_bounded():
    labels = np.zeros((16, 16), np.int32)
    history = proofread.EditHistory(steps=3)
    for i in range(1, 6):
        edited = labels.copy()
        edited[i, i] = i
        history.record(labels, edited)
        labels = edited
    assert len(history) == 3                              # the oldest edits are forgotten
    assert all(p.labels.shape == (1, 1) for p in history._patches)
    small = proofread.EditHistory(max_bytes=64)
    small.record(np.zeros((8, 8), np.int32), np.ones((8, 8), np.int32))  # 256 bytes: not kept
    assert len(small) == 0
    with pytest.raises(ShiftSegError, match="steps"):
        proofread.EditHistory(steps=0)
