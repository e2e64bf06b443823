"""Sparse annotations: unannotated pixels enter no loss, windows go where the labels are."""

import numpy as np
import pytest
import torch

from napari_shiftseg.network.settings import SegmentationSettings
from napari_shiftseg.training import train as train_module
from napari_shiftseg.training.loss import foreground_loss
from napari_shiftseg.training.sparse import (
    UNANNOTATED,
    annotated_region,
    mark_unannotated,
    painted_margin,
)
from napari_shiftseg.training.tuning import score
from napari_shiftseg.util._errors import ShiftSegError


def _labels():
    labels = np.zeros((40, 40), np.int32)
    labels[10:18, 10:18] = 1      # painted
    labels[25:33, 25:33] = 2      # painted
    return labels


def test_painted_region_is_objects_plus_margin():
    labels = _labels()
    margin = painted_margin(labels)
    assert 2 <= margin <= 6                                   # half of a ~9 px diameter
    region = annotated_region(labels, "painted")
    assert region[labels > 0].all()
    assert region[10 - margin, 14] and not region[10 - margin - 1, 14]
    assert not region[2, 38]                                  # far from any painted object
    marked = mark_unannotated(labels, "painted")
    assert (marked[~region] == UNANNOTATED).all() and (marked[region] >= 0).all()
    assert (marked[labels > 0] == labels[labels > 0]).all()


def test_mask_region_and_its_errors():
    labels = _labels()
    mask = np.zeros_like(labels)
    mask[:20] = 1
    marked = mark_unannotated(labels, mask)
    assert (marked[20:][labels[20:] == 0] == UNANNOTATED).all()
    assert (marked[25:33, 25:33] == 2).all()                  # a painted object stays whole
    with pytest.raises(ShiftSegError, match="shape"):
        mark_unannotated(labels, mask[:10])
    with pytest.raises(ShiftSegError, match="no painted object"):
        mark_unannotated(labels, np.zeros_like(labels))
    assert mark_unannotated(labels, None) is labels


def test_foreground_loss_ignores_unannotated_pixels():
    logits = torch.zeros(1, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[0, :2] = 1
    known = torch.zeros(1, 4, 4, dtype=torch.bool)
    known[0, :2] = True
    logits_changed = logits.clone()
    logits_changed[0, 2:] = 50.0                              # "foreground" where nothing is known
    assert float(foreground_loss(logits_changed, labels, known)) == pytest.approx(
        float(foreground_loss(logits, labels, known)))
    assert float(foreground_loss(logits_changed, labels)) > float(foreground_loss(logits, labels)) + 1


def test_scores_ignore_predictions_outside_the_annotated_region(monkeypatch):
    import napari_shiftseg.inference.evaluate as evaluate

    gt = _labels()
    marked = mark_unannotated(gt, "painted")
    pred = gt.copy()
    pred[30:36, 2:6] = 3                                      # an unpainted nucleus, found
    monkeypatch.setattr(evaluate, "segment_embeddings", lambda emb, settings, fg: pred)
    full = score([None], [(None, gt)], SegmentationSettings())
    sparse = score([None], [(None, marked)], SegmentationSettings())
    assert full["ap@0.5"] < 1.0 and sparse["ap@0.5"] == 1.0


def test_training_sees_only_annotated_pixels(monkeypatch):
    """Windows hold annotated pixels; the foreground loss gets the annotated mask."""
    from napari_shiftseg.network.geometry import UNetGeometry
    from napari_shiftseg.network.unet import UNetConfig

    rng = np.random.default_rng(0)
    labels = np.zeros((96, 96), np.int32)
    for i, (y, x) in enumerate([(10, 10), (10, 60), (60, 10), (60, 60), (35, 35), (80, 80)]):
        labels[y:y + 8, x:x + 8] = i + 1
    image = (labels > 0) + 0.1 * rng.normal(size=labels.shape)
    sparse = np.where(np.isin(labels, [1, 2]), labels, 0)     # a third of the objects painted
    seen = []
    original = train_module.foreground_loss

    def spy(logits, instances, mask=None):
        seen.append((instances.clone(), None if mask is None else mask.clone()))
        return original(logits, instances, mask)

    monkeypatch.setattr(train_module, "foreground_loss", spy)
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2)
    model, _ = train_module.train(image.astype(np.float32), sparse, config, steps=6, batch_size=2,
                                  output_window=(16, 16), validation=0, annotated="painted")
    assert "sparse labels" in model.meta["training_data"]
    assert len(seen) == 6
    for instances, mask in seen:
        assert mask is not None and mask.any(dim=(1, 2)).all()   # every window holds annotated pixels
        assert (instances >= 0).all()                            # -1 never reaches a loss
    with pytest.raises(ShiftSegError, match="background as an instance"):
        train_module.train(image.astype(np.float32), sparse, config, steps=1, output_window=(16, 16),
                           validation=0, annotated="painted", background_as_instance=True)
