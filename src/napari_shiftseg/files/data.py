"""Training data: read a user's image + instance-label files and validate the pair.

Supported files: TIFF (``.tif``/``.tiff``, via tifffile), ``.npy`` and zarr (a ``.zarr``
directory holding an array, or a group with a single array or an OME-Zarr ``"0"`` level).
Training crops need random access, so the arrays are read into memory.

What is checked, with one user-facing :class:`~napari_shiftseg.util._errors.ShiftSegError` per
problem:

- the files exist and can be read;
- image and labels are 2D or 3D (singleton axes, e.g. an ImageJ ``(1, y, x)`` stack, are
  dropped) and have the same shape;
- the image holds real, finite numbers (no NaN or infinity);
- the labels hold non-negative whole numbers: 0 is background, every other value is one
  instance. Float label files whose values are all whole numbers are accepted (several tools
  save labels as float32); fractional values and boolean masks are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..util._errors import ShiftSegError

__all__ = ["read_array", "validate_image", "validate_labels", "validate_pair", "load_training_pair"]

TIFF_SUFFIXES = (".tif", ".tiff")


def read_array(path) -> np.ndarray:
    """A whole image file in memory, read by :func:`napari_shiftseg.files.io.read_image` (the one
    reader: TIFF, ``.npy``, zarr and OME-Zarr, same rules as ``shiftseg segment``).

    Raises
    ------
    ShiftSegError
        If the file does not exist, has an unsupported suffix, or cannot be read.
    """
    from .io import read_image

    image = read_image(path)
    try:
        return np.asarray(image.compute() if hasattr(image, "compute") else image)
    except Exception as err:  # corrupt chunks raise a zoo of exception types
        raise ShiftSegError(f"cannot read {Path(path).name} ({type(err).__name__}: {err})") from None


def _squeeze(array: np.ndarray) -> np.ndarray:
    # Drop singleton axes (e.g. ImageJ's (1, y, x) or a (z, 1, y, x) channel axis), but keep a
    # (y, x) image 2D even if one of its sides happens to be 1 pixel long.
    squeezed = np.squeeze(array)
    return squeezed if squeezed.ndim >= 2 else array


def validate_image(image, name: str = "image") -> np.ndarray:
    """Check a raw image and return it as a float32 numpy array (2D or 3D).

    Raises
    ------
    ShiftSegError
        If the image is not 2D/3D, does not hold real numbers, or contains NaN/infinity.
    """
    image = _squeeze(np.asarray(image))
    if image.ndim not in (2, 3):
        raise ShiftSegError(f"the {name} must be 2D (y, x) or 3D (z, y, x), got shape {image.shape}")
    if image.size == 0:
        raise ShiftSegError(f"the {name} is empty (shape {image.shape})")
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise ShiftSegError(f"the {name} must hold real numbers, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ShiftSegError(
            f"the {name} contains NaN or infinite values; replace them (e.g. with 0) first"
        )
    return image


def validate_labels(labels, name: str = "labels") -> np.ndarray:
    """Check an instance label image and return it as int32 (0 = background).

    Raises
    ------
    ShiftSegError
        If the labels are not 2D/3D, are boolean, hold fractional, negative or non-finite
        values, or have ids too large for int32.
    """
    labels = _squeeze(np.asarray(labels))
    if labels.ndim not in (2, 3):
        raise ShiftSegError(f"the {name} must be 2D (y, x) or 3D (z, y, x), got shape {labels.shape}")
    if labels.dtype == bool:
        raise ShiftSegError(
            f"the {name} are a yes/no mask; training needs one id per object (0 = background), "
            "e.g. from skimage.measure.label(mask)"
        )
    if not np.issubdtype(labels.dtype, np.number) or np.iscomplexobj(labels):
        raise ShiftSegError(f"the {name} must hold whole-number instance ids, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise ShiftSegError(
                f"the {name} hold fractional or NaN values (dtype {labels.dtype}); instance labels "
                "must be whole numbers, 0 for background"
            )
    if labels.size and labels.min() < 0:
        raise ShiftSegError(f"the {name} contain negative ids (min {labels.min()}); use 0 for background")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ShiftSegError(f"the {name} contain ids above {np.iinfo(np.int32).max}; relabel them")
    return labels.astype(np.int32, copy=False)


def validate_pair(image, labels, ndim: int | None = None, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Validate an image with its instance labels; returns (float32 image, int32 labels).

    Parameters
    ----------
    image, labels : array-like
        Raw image and instance labels of the same shape.
    ndim : int, optional
        Required dimensionality (the model's), if known.
    channels : int
        Input channels of the model: with more than one the image holds them on its first
        axis, (C, y, x) or (C, z, y, x).

    Raises
    ------
    ShiftSegError
        If either array is invalid (see :func:`validate_image`, :func:`validate_labels`), the
        shapes differ, or the dimensionality is not ``ndim``.
    """
    if channels > 1:
        return _validate_channels_pair(image, labels, ndim, channels)
    image = validate_image(image)
    labels = validate_labels(labels)
    if image.shape != labels.shape:
        raise ShiftSegError(
            f"image shape {image.shape} and labels shape {labels.shape} differ; they must match "
            "pixel for pixel"
        )
    if ndim is not None and image.ndim != ndim:
        raise ShiftSegError(f"the model is {ndim}D but the image is {image.ndim}D (shape {image.shape})")
    return image, labels


def _validate_channels_pair(image, labels, ndim, channels: int):
    """validate_pair for a channel-first image of a multi-channel model."""
    labels = validate_labels(labels)
    shape = tuple(np.shape(image))
    if len(shape) != labels.ndim + 1 or shape[0] != channels:
        raise ShiftSegError(
            f"the model takes {channels} channels: the image must be channel-first, shape "
            f"({channels}, {', '.join(map(str, labels.shape))}) for labels of shape {labels.shape}; "
            f"got {shape}")
    image = np.stack([validate_image(np.asarray(image)[c], f"image channel {c}") for c in range(channels)])
    if image.shape[1:] != labels.shape:
        raise ShiftSegError(f"image shape {image.shape[1:]} (per channel) and labels shape {labels.shape} "
                            "differ; they must match pixel for pixel")
    if ndim is not None and labels.ndim != ndim:
        raise ShiftSegError(f"the model is {ndim}D but the labels are {labels.ndim}D (shape {labels.shape})")
    return image, labels


def load_training_pair(image_path, labels_path, ndim: int | None = None, channels=None):
    """Read and validate an image file and its label file.

    Returns
    -------
    image : numpy.ndarray
        float32, 2D or 3D (with ``channels``: those channels of the file first, (C, *spatial)).
    labels : numpy.ndarray
        int32, same spatial shape, 0 = background.

    Raises
    ------
    ShiftSegError
        If a file is missing or unreadable, or the pair is invalid (see :func:`validate_pair`).

    Examples
    --------
    >>> image, labels = load_training_pair("sample_data/2d/image.tif",
    ...                                    "sample_data/2d/labels.tif")  # doctest: +SKIP
    """
    if channels is not None:  # a multi-channel model's channels, stacked first
        from .io import read_spatial

        image = np.asarray(read_spatial(image_path, list(channels)))
    else:
        image = read_array(image_path)
    labels = read_array(labels_path)
    try:
        return validate_pair(image, labels, ndim, len(channels) if channels is not None else 1)
    except ShiftSegError as err:
        raise ShiftSegError(f"{Path(image_path).name} / {Path(labels_path).name}: {err}") from None
