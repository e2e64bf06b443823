"""Held-out validation during training, and segmentation settings tuned on it.

Annotated pixels that training never sees are the only honest judge of a model, so training
keeps some back (:func:`split_validation`), scores the network on them now and then to keep the
best checkpoint (:func:`validation_embeddings` + :func:`score`), and at the end searches the
segmentation settings on them (:func:`tune_settings`), as StarDist optimises its thresholds.
The chosen settings are stored in the model file, so ``shiftseg segment`` and the widgets use
them without being told.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..imaging import metrics
from ..network.settings import SegmentationSettings

__all__ = ["split_validation", "validation_embeddings", "score", "quick_score", "tune_settings",
           "MAP_THRESHOLDS"]

#: IoU thresholds of the averaged AP (0.5, 0.55, ..., 0.9).
MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))

#: Smallest held-out band (voxels along the split axis): thinner bands cut most objects.
MIN_BAND = 48


def split_validation(pairs, fraction: float, window) -> tuple[list, list, str]:
    """Hold out annotated data: whole images when there are 4 or more, else a band of each.

    With fewer images, the last ``fraction`` (at least :data:`MIN_BAND` voxels) of each image's
    longest axis is held out, if what is left still fits a training window. Returns
    ``(train_pairs, validation_pairs, description)``; no validation when nothing can be spared.
    """
    if not fraction or fraction <= 0:
        return list(pairs), [], "no validation (switched off)"
    if len(pairs) >= 4:
        n_val = max(1, round(fraction * len(pairs)))
        # Every k-th image: spread over the list, so one kind of image is not all held out.
        step = len(pairs) / n_val
        held_indices = {min(len(pairs) - 1, int(step * (i + 0.5))) for i in range(n_val)}
        val = [p for i, p in enumerate(pairs) if i in held_indices]
        train = [p for i, p in enumerate(pairs) if i not in held_indices]
        return train, val, f"{len(val)} of {len(pairs)} images held out for validation"
    train, val = [], []
    for image, labels in pairs:
        axis = int(np.argmax(labels.shape))
        n = labels.shape[axis]
        band = max(MIN_BAND, math.ceil(fraction * n))
        if n - band < window[axis] or not (labels > 0).any():
            train.append((image, labels))
            continue
        cut = [slice(None)] * labels.ndim
        cut[axis] = slice(0, n - band)
        keep = tuple(cut)
        cut[axis] = slice(n - band, n)
        held = tuple(cut)
        lead = (slice(None),) * (np.ndim(image) - labels.ndim)  # a multi-channel image's channels
        train.append((image[lead + keep], labels[keep]))
        if (labels[held] > 0).any():
            val.append((image[lead + held], labels[held]))
    if not val:
        return train, [], "no validation (the images are too small to hold a band out)"
    return train, val, f"the last {fraction:.0%} of each image held out for validation"


def validation_embeddings(model, pairs, device: str = "cpu") -> list[np.ndarray]:
    """Whole-image embeddings of the held-out images (network in eval mode; caller restores)."""
    from ..inference.evaluate import embed_array

    return [embed_array(image, model, device) for image, _ in pairs]


def score(embeddings, pairs, settings: SegmentationSettings, foreground: bool = True) -> dict:
    """Mean AP@0.5 and AP averaged over IoU 0.5-0.9 of the held-out images."""
    from ..inference.evaluate import segment_embeddings

    ap50, apm = [], []
    for emb, (_, gt) in zip(embeddings, pairs):
        pred = segment_embeddings(emb, settings, foreground)
        if (gt < 0).any():
            # Sparse annotations: what is predicted outside the annotated region is unknown.
            pred = np.where(gt < 0, 0, pred)
            gt = np.maximum(gt, 0)
        result = metrics.evaluate(gt, pred, thresholds=MAP_THRESHOLDS)
        ap50.append(result["ap@0.5"])
        apm.append(np.mean([result[f"ap@{t:g}"] for t in MAP_THRESHOLDS]))
    return {"ap@0.5": float(np.mean(ap50)), "map": float(np.mean(apm))}


def quick_score(embeddings, pairs, settings: SegmentationSettings, foreground: bool = True,
                delta_d: float = 3.0) -> dict:
    """The best :func:`score` over three bandwidths (checkpoint choice during training).

    A checkpoint is judged by what tuning can make of it: with one fixed bandwidth an early,
    blurry checkpoint can outscore a sharper later one that merely needs another bandwidth.

    Ties go to the middle of the tied bandwidths (the lower one of the two middle ones). A
    small held-out part (one crop's band, or sparse labels: a third of the nuclei of two
    images) often scores every bandwidth the same, and the bandwidth kept here is where tuning
    starts. Either end of such a plateau failed on unseen images: on BBBC007 *val*, a
    sparse-trained model scored 0.833 at the smallest (1.5) and a one-crop model 0.876 at the
    largest (3.9); the middle (2.25) gave 0.895 and 0.901.
    """
    results = []
    for factor in (0.5, 0.75, 1.0, 1.3):
        result = score(embeddings, pairs, dataclasses.replace(settings, bandwidth=round(delta_d * factor, 3)),
                       foreground)
        results.append({**result, "bandwidth": round(delta_d * factor, 3)})
    best = max(_key(r) for r in results)
    tied = [r for r in results if _key(r) == best]
    return tied[(len(tied) - 1) // 2]


def better(result: dict, than: dict | None) -> bool:
    """Whether held-out ``result`` beats ``than``: AP@0.5 first, then averaged AP."""
    return than is None or _key(result) > _key(than)


def _key(result: dict) -> tuple[float, float]:
    return (round(result["ap@0.5"], 4), round(result["map"], 4))


def tune_settings(embeddings, pairs, start: SegmentationSettings, foreground: bool = True,
                  delta_d: float = 3.0):
    """Coordinate search of the segmentation settings on the held-out images.

    One setting at a time, in the order that matters most (bandwidth, foreground threshold,
    smallest object, then post-processing), keeping a change only if it scores better
    (AP@0.5, then averaged AP). About two dozen segmentations of the held-out images.

    Returns ``(settings, result, trials)`` where ``trials`` lists every tried setting.
    """
    median = metrics.median_object_size([gt for _, gt in pairs])
    grid: dict[str, list[Any]] = {
        # Trained means are >= 2·delta_d apart: bandwidths up to ~1.5·delta_d can still part them.
        "bandwidth": sorted({round(delta_d * f, 3) for f in (0.33, 0.5, 0.67, 0.83, 1.0, 1.15, 1.3, 1.5)}),
        "fg_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
        "min_size": sorted({int(median * f) for f in (0.0, 0.05, 0.1, 0.2, 0.35)}),
        "merge_distance": [0.0] + [round(delta_d * f, 3) for f in (0.33, 0.5, 0.75)],
        "absorb_small": [False, True],
        "fill_holes": [False, True],
    }
    best = start
    best_result = score(embeddings, pairs, best, foreground)
    trials = [{**best.to_meta(), **best_result}]
    for name, values in grid.items():
        for value in values:
            if getattr(best, name) == value:
                continue
            candidate = dataclasses.replace(best, **{name: value})
            result = score(embeddings, pairs, candidate, foreground)
            trials.append({**candidate.to_meta(), **result})
            if better(result, best_result):
                best, best_result = candidate, result
    return best, best_result, trials
