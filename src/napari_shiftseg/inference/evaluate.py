"""Segmentation of small held-out images and scoring against labels, for measuring a model.

:func:`segment_array` is a :class:`~napari_shiftseg.inference.session.Session` run (the one way
to segment: the same resampling plan, normalisation, clustering and labelling as the widgets and
``shiftseg segment``) with one tile covering the image: the network runs once on the whole
(reflect-padded, globally normalised) image, the foreground embeddings are clustered by
mean-shift, each voxel gets its nearest mode and every cluster is split into connected
components (far-apart objects may share an embedding: a U-Net can tell at most f^(d·l)
same-looking objects apart, THEORY.md result 2). It holds the whole image in memory: large
volumes go through ``shiftseg segment`` (:meth:`Session.run_to_zarr`) instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..files.data import validate_image
from ..network.modelio import Model
from ..network.settings import SegmentationSettings
from ..util._errors import ShiftSegError

__all__ = ["embed_array", "segment_array", "segment_embeddings", "default_bandwidth",
           "default_min_size", "evaluate_model"]


def default_bandwidth(model: Model) -> float:
    """The model's recorded mean-shift bandwidth, else ``2/3 · delta_d`` (2.0 for delta_d 3)."""
    return SegmentationSettings.of(model).bandwidth


def default_min_size(model: Model) -> int:
    """The model's recorded smallest object size, else the default."""
    return SegmentationSettings.of(model).min_size


def channel_first(image, model: Model) -> np.ndarray:
    """A multi-channel model's image, checked: float32, channels on the first axis, (C, *spatial)."""
    channels = model.config.in_channels
    if np.ndim(image) != model.geometry.ndim + 1 or np.shape(image)[0] != channels:
        raise ShiftSegError(f"the model takes {channels} channels: give a channel-first image of "
                            f"shape ({channels}, ...) with {model.geometry.ndim} spatial axes, "
                            f"got shape {np.shape(image)}")
    return np.stack([validate_image(np.asarray(image)[c], f"image channel {c}") for c in range(channels)])


def embed_array(image, model: Model, device: str | torch.device = "cpu") -> np.ndarray:
    """Embeddings of a whole image, (E [+1 foreground logit], *image.shape), as numpy.

    Normalised with the model's recorded percentiles of the *whole* image, reflect-padded once
    (spatial models get their global positions added, as in the tiled path).
    """
    from .predict import predict_whole

    if model.config.in_channels > 1:
        return np.asarray(predict_whole(channel_first(image, model), model, device=str(device), channel_axis=0))
    image = validate_image(image)
    if image.ndim != model.geometry.ndim:
        raise ShiftSegError(f"the model is {model.geometry.ndim}D but the image is {image.ndim}D "
                            f"(shape {image.shape})")
    return np.asarray(predict_whole(image, model, device=str(device)))


def segment_embeddings(embeddings, settings: SegmentationSettings, foreground: bool = True,
                       n_seeds: int = 1000, seed: int = 0) -> np.ndarray:
    """Instance labels (int32 numpy) of in-memory embeddings with the given settings."""
    from .instances import segment_instances

    labels, _ = segment_instances(embeddings, settings, foreground=foreground, n_seeds=n_seeds, seed=seed)
    return np.asarray(labels.compute(scheduler="sync"), dtype=np.int32)


def segment_array(
    image,
    model: Model,
    settings: SegmentationSettings | None = None,
    diameter: float | str | None = "auto",
    device: str | torch.device = "cpu",
    n_seeds: int = 1000,
    seed: int = 0,
    **overrides,
) -> np.ndarray:
    """Instance labels of a small 2D/3D image (whole-image inference + mean-shift + CC).

    Parameters
    ----------
    image : array-like
        Raw image, 2D or 3D like the model.
    model : Model
        A trained model. With a foreground head, voxels with probability above the
        foreground threshold are clustered; without one, the most populous cluster is taken
        as background (models trained with ``background_as_instance``).
    settings : SegmentationSettings, optional
        Use these instead of the model's recorded settings (:meth:`SegmentationSettings.of`).
    diameter : float, 'auto' or None
        Object diameter in the image (pixels). When it differs from the diameter the model
        records (``meta["object_diameter"]``), the image is resampled to the model's scale and
        the labels back (:mod:`napari_shiftseg.imaging.rescale`). ``'auto'`` (default) measures it
        from the image (:func:`napari_shiftseg.imaging.sizing.estimate_size`); None, or a model that
        records no diameter, segments as is.
    device : str or torch.device
        Where to run the network.
    n_seeds, seed : int
        Mean-shift seeds per round (random foreground voxels; later rounds draw from the voxels
        no mode covers yet) and their random seed.
    **overrides
        Fields of the settings to change (``bandwidth=1.5``, ``fg_threshold=0.4``); None keeps
        the recorded value.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 = background, objects 1..N.
    """
    from .segment_options import ClusterOptions, SegmentOptions
    from .session import WHOLE, Session

    settings = (settings or SegmentationSettings.of(model)).replace(**overrides)
    if model.config.in_channels > 1:
        image = channel_first(image, model)
    else:
        image = validate_image(image)
        if image.ndim != model.geometry.ndim:
            raise ShiftSegError(f"the model is {model.geometry.ndim}D but the image is {image.ndim}D "
                                f"(shape {image.shape})")
    # The session's run, with one tile covering the image (whole-image inference) and no maps.
    options = SegmentOptions(tile=WHOLE, device=str(device), settings=settings, diameter=diameter,
                             clustering=ClusterOptions(n_seeds=n_seeds, seed=seed))
    return Session(image, model, options).run(maps=False).labels


def evaluate_model(model: Model, pairs, thresholds=(0.5,), **segment_kwargs) -> dict:
    """Segment each (image, labels) pair and score it with :func:`metrics.evaluate`.

    Returns the metrics of every pair under ``"images"`` and the mean of each numeric metric.
    """
    from ..imaging import metrics

    results = [metrics.evaluate(gt, segment_array(img, model, **segment_kwargs), thresholds=thresholds)
               for img, gt in pairs]
    keys = [k for k, v in results[0].items() if isinstance(v, (int, float, np.number))]
    summary: dict[str, Any] = {k: float(np.mean([r[k] for r in results])) for k in keys}
    summary["images"] = results
    return summary


# --------------------------------------------------------------------------- scoring methods

#: IoU thresholds of the mean AP ("mAP"): 0.5, 0.55, ..., 0.9.
MAP_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))
#: Columns of :func:`score_methods` rows, in table order.
SCORE_COLUMNS = ("ap@0.5", "mAP", "recall@0.5", "false_splits", "false_merges", "n_gt", "n_pred",
                 "seconds")


def model_method(model: Model, **segment_kwargs):
    """A ``image -> labels`` callable that segments with ``model`` via :func:`segment_array`."""
    def segment(image):
        return segment_array(image, model, **segment_kwargs)
    return segment


def score_methods(pairs, methods) -> tuple[list[dict], dict[str, dict]]:
    """Segment every image with every method and score it against its labels.

    Parameters
    ----------
    pairs : iterable of (name, image, labels)
        Images with their ground-truth instance labels (0 = background).
    methods : mapping of str to callable
        ``name -> f(image) -> labels``, e.g. ``{"model": model_method(m),
        "otsu+watershed": classical.otsu_watershed}``.

    Returns
    -------
    rows : list of dict
        One per (image, method): ``"image"``, ``"method"`` and :data:`SCORE_COLUMNS` (mAP is the
        AP averaged over IoU 0.5:0.05:0.9; seconds is the wall time of the method).
    summary : dict
        Per method: the mean over images of ``ap@0.5``, ``mAP`` and ``recall@0.5``; the sums of
        false splits, false merges, n_gt, n_pred and seconds; and ``"images"``.
    """
    import time

    from ..imaging import metrics

    methods = dict(methods)
    if not methods:
        raise ShiftSegError("no segmentation method to score")
    rows = []
    for name, image, labels in pairs:
        labels = np.asarray(labels)
        if labels.shape != np.shape(image):
            raise ShiftSegError(f"{name}: the labels have shape {labels.shape} but the image has "
                                f"shape {np.shape(image)}")
        for method, segment in methods.items():
            start = time.perf_counter()
            pred = np.asarray(segment(image))
            seconds = time.perf_counter() - start
            scores = metrics.evaluate(labels, pred, thresholds=MAP_IOU_THRESHOLDS, recall=True)
            rows.append({
                "image": str(name),
                "method": method,
                "ap@0.5": float(scores["ap@0.5"]),
                "mAP": float(np.mean([scores[f"ap@{t:g}"] for t in MAP_IOU_THRESHOLDS])),
                "recall@0.5": float(scores["recall@0.5"]),
                "false_splits": int(scores["false_splits"]),
                "false_merges": int(scores["false_merges"]),
                "n_gt": int(scores["n_gt"]),
                "n_pred": int(scores["n_pred"]),
                "seconds": float(seconds),
            })
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        entry = {k: float(np.mean([r[k] for r in mine])) for k in ("ap@0.5", "mAP", "recall@0.5")}
        entry.update({k: int(sum(r[k] for r in mine))
                      for k in ("false_splits", "false_merges", "n_gt", "n_pred")})
        entry["seconds"] = float(sum(r["seconds"] for r in mine))
        entry["images"] = len(mine)
        summary[method] = entry
    return rows, summary


def format_scores(rows, summary, title: str | None = None) -> str:
    """A plain-text table of :func:`score_methods` output: per image, then overall (mean AP)."""
    head = ("image", "method") + SCORE_COLUMNS
    table = []
    for r in rows:
        table.append((r["image"], r["method"]) + tuple(_cell(r[k]) for k in SCORE_COLUMNS))
    for method, s in summary.items():
        table.append(("overall", method) + tuple(_cell(s[k]) for k in SCORE_COLUMNS))
    widths = [max(len(str(row[i])) for row in [head, *table]) for i in range(len(head))]
    lines = [f"== {title} ==" if title else None,
             "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for n, row in enumerate(table):
        if n == len(rows):
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(line for line in lines if line is not None)


def _cell(value) -> str:
    return str(value) if isinstance(value, (int, np.integer)) else f"{value:.3f}"
