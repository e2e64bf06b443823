"""Tests for the Otsu + watershed baseline and the shared scoring (evaluate.score_methods)."""

import numpy as np
import pytest
from scipy import ndimage

from napari_shiftseg.imaging import metrics
from napari_shiftseg.imaging.classical import otsu_watershed
from napari_shiftseg.inference.evaluate import format_scores, score_methods
from napari_shiftseg.util._errors import ShiftSegError


def disks(shape, centres, radius):
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for index, centre in enumerate(centres, start=1):
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        labels[d2 <= radius**2] = index
    return labels


def test_two_separated_disks():
    gt = disks((64, 64), [(20, 20), (44, 44)], 8)
    image = (gt > 0).astype(np.float32) + 0.05 * np.random.default_rng(0).random((64, 64))
    pred = otsu_watershed(image)
    assert pred.dtype == np.int32 and int(pred.max()) == 2
    assert metrics.evaluate(gt, pred)["ap@0.5"] == 1.0


def test_two_touching_disks_are_split():
    # Overlapping disks: one connected foreground blob, two distance-transform peaks.
    gt = disks((64, 80), [(32, 26), (32, 52)], 14)
    image = (gt > 0).astype(np.float32)
    _, n_fg = ndimage.label(image > 0)
    assert n_fg == 1
    pred = otsu_watershed(image)
    result = metrics.evaluate(gt, pred)
    assert result["n_pred"] == 2 and result["ap@0.5"] == 1.0 and result["false_merges"] == 0


def test_3d_spheres():
    gt = disks((32, 48, 48), [(16, 14, 14), (16, 34, 34)], 7)
    pred = otsu_watershed(gt.astype(np.float32) * 100)
    assert metrics.evaluate(gt, pred)["ap@0.5"] == 1.0


def test_flat_image_has_no_objects():
    assert not otsu_watershed(np.ones((16, 16), np.float32)).any()


@pytest.mark.parametrize("call, word", [
    (lambda: otsu_watershed(np.zeros(8)), "2D or 3D"),
    (lambda: otsu_watershed(np.zeros((8, 8)), sigma=-1), "sigma"),
    (lambda: otsu_watershed(np.zeros((8, 8)), min_distance=0), "min_distance"),
    (lambda: otsu_watershed(np.full((8, 8), np.nan)), "NaN"),
])
def test_bad_input(call, word):
    with pytest.raises(ShiftSegError, match=word):
        call()


def test_score_methods_counts_and_scores():
    gt = disks((64, 64), [(20, 20), (44, 44)], 8)
    image = (gt > 0).astype(np.float32)

    def merged(img):  # a method that merges both disks into one object
        return (img > 0).astype(np.int32)

    rows, summary = score_methods([("a", image, gt), ("b", image, gt)],
                                  {"baseline": otsu_watershed, "merged": merged})
    assert [(r["image"], r["method"]) for r in rows] == [
        ("a", "baseline"), ("a", "merged"), ("b", "baseline"), ("b", "merged")]
    good = summary["baseline"]
    assert good["ap@0.5"] == 1.0 and good["recall@0.5"] == 1.0 and good["mAP"] == 1.0
    assert good["n_gt"] == 4 and good["n_pred"] == 4 and good["images"] == 2
    bad = summary["merged"]
    # The merged blob has IoU exactly 0.5 with each disk: no match, as a match needs IoU > 0.5.
    assert bad["false_merges"] == 2 and bad["n_pred"] == 2
    assert bad["ap@0.5"] == 0.0 and bad["recall@0.5"] == 0.0 and bad["mAP"] == 0.0
    text = format_scores(rows, summary, title="t")
    assert "overall" in text and "merged" in text and "mAP" in text


def test_score_methods_refuses_shape_mismatch():
    with pytest.raises(ShiftSegError, match="shape"):
        score_methods([("a", np.zeros((8, 8)), np.zeros((8, 9), np.int32))],
                      {"b": otsu_watershed})
