"""A classical baseline: Otsu threshold + distance-transform watershed (2D and 3D).

This is the pipeline a biologist would try first, with fixed settings and no tuning, so that
the learned method has an honest bar to clear (``shiftseg evaluate --baseline``,
``benchmarks/bench_real.py``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy import ndimage

from ..util._errors import ShiftSegError

__all__ = ["otsu_watershed"]


def otsu_watershed(image, sigma: float = 1.0, min_distance: int = 7) -> np.ndarray:
    """Instance labels by Gaussian smoothing, Otsu threshold and a distance-transform watershed.

    1. smooth the image with a Gaussian of ``sigma`` pixels;
    2. foreground = smoothed > Otsu threshold (bright objects on a dark background);
    3. Euclidean distance transform of the foreground;
    4. one seed per local maximum of the distance at least ``min_distance`` pixels apart
       (``skimage.feature.peak_local_max``, one seed per connected component at least);
    5. watershed of ``-distance`` from the seeds, restricted to the foreground.

    Parameters
    ----------
    image : array-like
        2D (y, x) or 3D (z, y, x) image, objects brighter than the background.
    sigma : float
        Gaussian smoothing in pixels (>= 0; 0 switches it off).
    min_distance : int
        Smallest distance between two seeds in pixels (>= 1).

    Returns
    -------
    numpy.ndarray of int32
        0 = background, objects 1..N.

    Raises
    ------
    ShiftSegError
        On an image that is not 2D/3D numeric, or bad settings.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import relabel_sequential, watershed

    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ShiftSegError(f"the image must be 2D or 3D, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise ShiftSegError(f"the image must hold real numbers, got data type {image.dtype}")
    ok = isinstance(sigma, Real) and not isinstance(sigma, bool) and math.isfinite(sigma)
    if not ok or sigma < 0:
        raise ShiftSegError(f"sigma {sigma!r} must be a finite number >= 0")
    if not isinstance(min_distance, Integral) or isinstance(min_distance, bool) or min_distance < 1:
        raise ShiftSegError(f"min_distance {min_distance!r} must be a whole number >= 1")

    smooth = image.astype(np.float32)
    if not np.all(np.isfinite(smooth)):
        raise ShiftSegError("the image contains NaN or infinite values")
    if sigma > 0:
        smooth = ndimage.gaussian_filter(smooth, float(sigma))
    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros(image.shape, dtype=np.int32)  # a flat image has no objects
    foreground = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(foreground)
    components, _ = ndimage.label(foreground)
    peaks = peak_local_max(distance, min_distance=int(min_distance), labels=components,
                           exclude_border=False)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground)
    return relabel_sequential(labels.astype(np.int32))[0].astype(np.int32, copy=False)
