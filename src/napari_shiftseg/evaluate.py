"""Whole-image segmentation of small held-out images, for measuring a model's accuracy.

:func:`segment_array` runs the network once on the whole (reflect-padded) image, keeps the
foreground, clusters its embeddings by mean-shift, gives each pixel its nearest mode, and splits
every cluster into connected components (far-apart objects may share an embedding: a U-Net can
tell at most f^(d·l) same-looking objects apart, THEORY.md result 2).

**This is a reference implementation for evaluation and tests only.** It holds the whole image
and its embeddings in memory. Large images are segmented by the lazy tile-and-stitch engine
(``predict.py`` + ``instances.py``), which supersedes this module for real use; on an image that
fits in one tile both follow the same recipe.
"""

from __future__ import annotations

import numpy as np
import torch

from ._errors import ShiftSegError
from .data import validate_image
from .meanshift import assign_to_modes, mean_shift
from .modelio import Model
from .normalize import percentile_normalization
from .unet import memory_format

__all__ = ["embed_array", "segment_array", "default_bandwidth", "evaluate_model"]

#: Fraction of the push margin used as mean-shift bandwidth when the model does not say.
#: Trained means are >= 2·delta_d apart and pixels lie within ~delta_v of their mean, so a
#: bandwidth around delta_d separates clusters with room to spare.
BANDWIDTH_OF_DELTA_D = 2.0 / 3.0


#: Smallest object kept (pixels/voxels) when the model records no ``min_size``.
DEFAULT_MIN_SIZE = 10


def default_bandwidth(model: Model) -> float:
    """The model's recorded mean-shift bandwidth, else ``2/3 · delta_d`` (2.0 for delta_d 3)."""
    meta = model.meta or {}
    if "bandwidth" in meta:
        return float(meta["bandwidth"])
    delta_d = float(meta.get("loss", {}).get("delta_d", 3.0))
    return BANDWIDTH_OF_DELTA_D * delta_d


def embed_array(image, model: Model, device: str | torch.device = "cpu") -> np.ndarray:
    """Embeddings of a whole image in one forward pass: (E [+1 foreground logit], *image.shape).

    The image is normalised globally (as recorded in the model), reflect-padded once by the
    context (more at the end to reach a valid input size), and the output cropped back.
    """
    g = model.geometry
    image = validate_image(image)
    if image.ndim != g.ndim:
        raise ShiftSegError(f"the model is {g.ndim}D but the image is {image.ndim}D (shape {image.shape})")
    norm_meta = (model.meta or {}).get("normalization", {"low": 1.0, "high": 99.8})
    if norm_meta.get("method", "percentile") != "percentile":
        raise ShiftSegError(f"unsupported normalisation {norm_meta.get('method')!r} in {model.name}")
    norm = percentile_normalization(image, norm_meta.get("low", 1.0), norm_meta.get("high", 99.8))
    front = g.context_per_side
    sizes = [g.nearest_valid_input(n + g.context) for n in image.shape]
    padded = np.pad(norm(image).astype(np.float32), [(front, s - n - front) for s, n in zip(sizes, image.shape)],
                    mode="reflect")
    net = model.net
    fmt = memory_format(g.ndim)
    with torch.inference_mode():
        x = torch.from_numpy(padded)[None, None].to(device).contiguous(memory_format=fmt)
        out = net.to(device).eval()(x)[0]
    out = out[(slice(None), *(slice(0, n) for n in image.shape))]
    return out.float().cpu().numpy()


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
        A trained model; with a foreground head, pixels with probability > ``foreground_threshold``
        are clustered. Without one, all pixels are clustered and the largest cluster is taken as
        background (models trained with ``background_as_instance``).
    bandwidth : float, optional
        Mean-shift bandwidth in embedding units; default :func:`default_bandwidth`.
    foreground_threshold : float
        Foreground probability threshold.
    min_size : int, optional
        Connected components smaller than this many pixels are dropped; default: the model's
        recorded ``min_size``, else 10.
    n_seeds, seed : int
        Mean-shift seeds (random foreground pixels) and their random seed.
    device : str or torch.device
        Where to run the network and mean-shift.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 = background, objects 1..N.
    """
    from skimage.measure import label as connected_components
    from skimage.segmentation import relabel_sequential

    if min_size is None:
        min_size = int((model.meta or {}).get("min_size", DEFAULT_MIN_SIZE))
    out = embed_array(image, model, device)
    embed_dim = model.config.embed_dim
    emb = out[:embed_dim]
    if model.config.foreground_head:
        fg = 1.0 / (1.0 + np.exp(-out[embed_dim])) > foreground_threshold
    else:
        fg = np.ones(out.shape[1:], dtype=bool)
    clusters = np.zeros(fg.shape, dtype=np.int64)
    if fg.any():
        points = emb[:, fg].T
        modes = mean_shift(points, bandwidth or default_bandwidth(model), n_seeds=n_seeds,
                           seed=seed, device=device)
        clusters[fg] = assign_to_modes(points, modes, device=device)
        if not model.config.foreground_head and clusters.max() > 0:
            clusters[clusters == np.bincount(clusters.ravel()).argmax()] = 0
    # label() joins neighbouring pixels of equal value: connected components inside each cluster.
    labels = connected_components(clusters, background=0, connectivity=1)
    if min_size > 1:
        # bincount instead of skimage's remove_small_objects, whose keyword changed in 0.26.
        small = np.bincount(labels.ravel()) < min_size
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


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
