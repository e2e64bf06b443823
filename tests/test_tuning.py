"""Held-out validation, checkpoint choice and settings tuned at the end of training."""

import numpy as np
import pytest
import torch

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.settings import SegmentationSettings
from napari_shiftseg.network.unet import UNetConfig
from napari_shiftseg.synthetic import synth
from napari_shiftseg.training.train import suggest_training_window, train
from napari_shiftseg.training.tuning import (
    score,
    split_validation,
    tune_settings,
    validation_embeddings,
)

torch.set_num_threads(1)


def _pairs(n, shape=(120, 100)):
    return [synth.random_objects(shape, n_objects=8, radius=5, seed=i) for i in range(n)]


def test_split_holds_out_whole_images_or_a_band():
    train4, val4, note = split_validation(_pairs(5), 0.2, (36, 36))
    assert len(val4) == 1 and len(train4) == 4 and "1 of 5 images" in note
    train1, val1, note = split_validation(_pairs(1), 0.15, (36, 36))
    (_, labels), (_, vlabels) = train1[0], val1[0]
    assert labels.shape == (72, 100) and vlabels.shape == (48, 100)  # longest axis, >= 48 rows
    np.testing.assert_array_equal(np.concatenate([labels, vlabels]), _pairs(1)[0][1])
    _, none, note = split_validation(_pairs(1, (60, 60)), 0.15, (36, 36))
    assert none == [] and "too small" in note
    assert split_validation(_pairs(2), 0.0, (36, 36))[1] == []


def _two_blobs():
    """Embeddings of two touching objects: far apart in embedding space, fg prob 0.6."""
    labels = np.zeros((20, 30), np.int32)
    labels[4:16, 3:15], labels[4:16, 15:27] = 1, 2
    emb = np.zeros((3, 20, 30), np.float32)
    emb[0][labels == 2] = 8.0
    emb[2] = np.where(labels > 0, np.log(0.6 / 0.4), -5.0)
    return emb, labels


def test_tuning_finds_better_settings_and_never_gets_worse():
    emb, labels = _two_blobs()
    pairs = [(None, labels)]
    start = SegmentationSettings(bandwidth=2.0, fg_threshold=0.7)  # misses every voxel
    assert score([emb], pairs, start)["ap@0.5"] == 0.0
    best, result, trials = tune_settings([emb], pairs, start)
    assert best.fg_threshold < 0.6 and result["ap@0.5"] == 1.0 and len(trials) > 5
    assert score([emb], pairs, best) == result


def test_window_is_sized_to_the_objects():
    geometry = UNetGeometry(ndim=2, levels=3)
    small = np.zeros((200, 200), np.int32)
    small[10:14, 10:14] = 1
    big = np.zeros((200, 200), np.int32)
    yy, xx = np.mgrid[:200, :200]
    big[(yy - 100) ** 2 + (xx - 100) ** 2 < 20**2] = 1
    w_small, w_big = suggest_training_window(geometry, [small]), suggest_training_window(geometry, [big])
    assert w_small[0] > geometry.grid and w_big[0] > w_small[0]
    assert w_big[0] >= 100  # ~3 diameters of a 40-pixel disk, capped
    assert geometry.is_valid_input(geometry.training_input_size(w_big[0]))
    assert suggest_training_window(geometry, [big[:70, :70]])[0] <= 70


def test_training_keeps_the_best_checkpoint_and_stores_tuned_settings():
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4, embed_dim=2,
                        embedding="spatial", position_scale=0.3)
    train_pairs = _pairs(2, (64, 64))
    val = [synth.random_objects((64, 64), n_objects=6, radius=5, seed=99)]
    model, history = train(train_pairs, None, config, steps=6, lr=3e-3, output_window=20,
                           validation_pairs=val, validate_every=3, batch_size=2)
    record = model.meta["validation"]
    assert [v["step"] for v in history["validation"]] == [3, 6]
    assert record["best_step"] in (3, 6) and "tuned" in record and record["trials"] > 5
    # The stored settings reproduce the stored held-out score.
    settings = SegmentationSettings.of(model)
    again = score(validation_embeddings(model, val), val, settings)
    assert again == pytest.approx(record["tuned"], abs=1e-4)
    assert record["tuned"]["ap@0.5"] >= max(v["ap@0.5"] for v in history["validation"]) - 1e-9


def test_checkpoint_score_breaks_ties_in_the_middle():
    """Two well-separated objects with tight embeddings: every bandwidth scores the same, and
    the middle of the plateau is kept (either end failed on unseen images)."""
    from napari_shiftseg.training.tuning import quick_score

    gt = np.zeros((20, 20), np.int32)
    gt[2:8, 2:8], gt[12:18, 12:18] = 1, 2
    emb = np.zeros((3, 20, 20), np.float32)
    emb[0][gt == 2] = 20.0                          # the second object is far away in embedding
    emb[2] = np.where(gt > 0, 10.0, -10.0)          # foreground logit
    result = quick_score([emb], [(None, gt)], SegmentationSettings(min_size=1), delta_d=3.0)
    assert result["ap@0.5"] == 1.0 and result["bandwidth"] == 2.25     # of 1.5, 2.25, 3.0, 3.9
    # Where some bandwidths are worse, the tie is among the best only: touching objects whose
    # embeddings are 1.6 apart merge at 3.0 and 3.9, and 1.5 (the one left, with 2.25 merging
    # at its edge or not) is in the middle of the best.
    gt[8:12, 2:8] = 1
    gt[12:18, 2:8] = 2                              # object 2 now touches object 1
    gt[2:18, 12:18] = 0
    emb[0] = np.where(gt == 2, 1.6, 0.0)
    emb[2] = np.where(gt > 0, 10.0, -10.0)
    result = quick_score([emb], [(None, gt)], SegmentationSettings(min_size=1), delta_d=3.0)
    assert result["ap@0.5"] == 1.0 and result["bandwidth"] in (1.5, 2.25)


def test_continued_training_keeps_the_start_when_training_makes_it_worse():
    """The starting weights are checkpoint 0: a rate that wrecks the network returns the start."""
    from napari_shiftseg.network.modelio import load_bundled

    start = load_bundled(2)
    pairs = [synth.nuclei((96, 96), seed=s, radius=(8, 10)) for s in (11, 12)]
    model, history = train(pairs[:1], None, start, steps=2, lr=0.02, batch_size=1, output_window=36,
                           validation_pairs=pairs[1:], validate_every=1, tune=False)
    scores = {v["step"]: v["ap@0.5"] for v in history["validation"]}
    assert sorted(scores) == [0, 1, 2] and scores[0] > 0.5 and scores[0] > max(scores[1], scores[2])
    assert model.meta["validation"]["best_step"] == 0
    for name, weights in start.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], weights), name
