"""Whole-image segmentation of small held-out images, for measuring a model's accuracy.

:func:`segment_array` runs the network once on the whole (reflect-padded, globally normalised)
image, clusters the foreground embeddings by mean-shift, gives each voxel its nearest mode and
splits every cluster into connected components (far-apart objects may share an embedding: a
U-Net can tell at most f^(d·l) same-looking objects apart, THEORY.md result 2).

It is a convenience wrapper around the engine (:func:`napari_shiftseg.predict.predict_whole`
and :func:`napari_shiftseg.instances.segment_instances`) that takes the model's recorded
normalisation, bandwidth and minimum object size and returns a numpy array. It holds the whole
image in memory: large volumes go through the lazy tiled engine (``predict_embeddings`` +
``segment_instances``/``write_instances``, or ``shiftseg segment``) instead.
"""

from __future__ import annotations

import numpy as np
import torch

from ._errors import ShiftSegError
from .data import validate_image
from .instances import DEFAULT_MIN_SIZE
from .modelio import Model
from .normalize import percentile_normalization

__all__ = ["embed_array", "segment_array", "default_bandwidth", "default_min_size", "evaluate_model"]

#: Fraction of the push margin used as mean-shift bandwidth when the model does not say.
#: Trained means are >= 2·delta_d apart and pixels lie within ~delta_v of their mean, so a
#: bandwidth below delta_d separates clusters with room to spare.
BANDWIDTH_OF_DELTA_D = 2.0 / 3.0

#: Smallest object kept (pixels/voxels) when the model records no ``min_size``.


def default_bandwidth(model: Model) -> float:
    """The model's recorded mean-shift bandwidth, else ``2/3 · delta_d`` (2.0 for delta_d 3)."""
    meta = model.meta or {}
    if "bandwidth" in meta:
        return float(meta["bandwidth"])
    delta_d = float(meta.get("loss", {}).get("delta_d", 3.0))
    return BANDWIDTH_OF_DELTA_D * delta_d


def default_min_size(model: Model) -> int:
    """The model's recorded smallest object size, else :data:`DEFAULT_MIN_SIZE`."""
    return int((model.meta or {}).get("min_size", DEFAULT_MIN_SIZE))


def embed_array(image, model: Model, device: str | torch.device = "cpu") -> np.ndarray:
    """Embeddings of a whole image, (E [+1 foreground logit], *image.shape), as numpy.

    Normalised with the model's recorded percentiles of the *whole* image, reflect-padded once.
    """
    from .predict import predict_whole

    image = validate_image(image)
    if image.ndim != model.geometry.ndim:
        raise ShiftSegError(f"the model is {model.geometry.ndim}D but the image is {image.ndim}D "
                            f"(shape {image.shape})")
    norm_meta = (model.meta or {}).get("normalization", {})
    if norm_meta.get("method", "percentile") != "percentile":
        raise ShiftSegError(f"unsupported normalisation {norm_meta.get('method')!r} in {model.name}")
    norm = percentile_normalization(image, norm_meta.get("low", 1.0), norm_meta.get("high", 99.8))
    return np.asarray(predict_whole(image, model, device=str(device), normalization=norm))


def segment_array(
    image,
    model: Model,
    bandwidth: float | None = None,
    foreground_threshold: float = 0.5,
    min_size: int | None = None,
    n_seeds: int = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Instance labels of a small 2D/3D image (whole-image inference + mean-shift + CC).

    Parameters
    ----------
    image : array-like
        Raw image, 2D or 3D like the model.
    model : Model
        A trained model. With a foreground head, voxels with probability above
        ``foreground_threshold`` are clustered; without one, the most populous cluster is
        taken as background (models trained with ``background_as_instance``).
    bandwidth : float, optional
        Mean-shift bandwidth in embedding units; default :func:`default_bandwidth`.
    foreground_threshold : float
        Foreground probability threshold.
    min_size : int, optional
        Objects smaller than this many voxels are dropped; default :func:`default_min_size`.
    n_seeds, seed : int
        Mean-shift seeds (random foreground voxels) and their random seed.
    device : str or torch.device
        Where to run the network.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 = background, objects 1..N.
    """
    from .instances import segment_instances

    embeddings = embed_array(image, model, device)
    labels, _ = segment_instances(
        embeddings,
        bandwidth=default_bandwidth(model) if bandwidth is None else bandwidth,
        fg_threshold=foreground_threshold,
        min_size=default_min_size(model) if min_size is None else min_size,
        n_seeds=n_seeds, seed=seed, foreground=model.config.foreground_head,
    )
    return np.asarray(labels.compute(scheduler="sync"), dtype=np.int32)


def evaluate_model(model: Model, pairs, thresholds=(0.5,), **segment_kwargs) -> dict:
    """Segment each (image, labels) pair and score it with :func:`metrics.evaluate`.

    Returns the metrics of every pair under ``"images"`` and the mean of each numeric metric.
    """
    from . import metrics

    results = [metrics.evaluate(gt, segment_array(img, model, **segment_kwargs), thresholds=thresholds)
               for img, gt in pairs]
    keys = [k for k, v in results[0].items() if isinstance(v, (int, float, np.number))]
    summary = {k: float(np.mean([r[k] for r in results])) for k in keys}
    summary["images"] = results
    return summary
