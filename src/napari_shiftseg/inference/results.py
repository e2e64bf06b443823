"""What a segmentation run produced (:class:`SegmentResult` in memory, :class:`LargeResult` on
disk), and the same on the image's own pixels.

A run on a resampled image (rescale.py) keeps its embeddings, clusters and diagnostics on that
image's grid and its labels on the image's; :func:`on_image_grid` and friends bring a map back.
The measurement table and proofreading read results from here (:mod:`.session`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from ..imaging import rescale
from ..imaging.measure import AXES, measure
from ..util._errors import ShiftSegError
from ..util.region import Region


@dataclass(frozen=True)
class Resampled:
    """Where a result computed on a resampled image sits: its part of the resampled image."""

    origin: tuple           # first voxel of the computed part, on the resampled image
    working_shape: tuple    # shape of the whole resampled image
    image_shape: tuple      # shape of the image itself
    factor: float


@dataclass
class SegmentResult:
    """Everything an in-memory run produced, kept by its session for re-clustering and edits."""

    embeddings: np.ndarray          # (E [+1 foreground logit], *spatial), float32
    labels: np.ndarray              # int32 instances
    diagnostics: dict = field(default_factory=dict)  # kind -> array (see _layers.KINDS)
    origin: tuple | None = None     # crop origin in the source image (None: whole image)
    foreground: bool = True
    note: str = ""                  # what the user should know about these labels
    # Set when the network ran on a resampled image: embeddings and diagnostics are on that
    # image's grid, labels on the image's own (rescale.py).
    resampled: Resampled | None = None
    # The mean-shift cluster of every voxel before connected components (on the embeddings'
    # grid): on an inseparable input it is one cluster, however many objects the labels show.
    clusters: np.ndarray | None = None
    # A preview's window: per axis, whether it cuts the image (low side, high side). Objects at
    # a cut are only partly inside; at the image's own edges they are whole as far as anyone
    # can tell, so a window as large as the image labels exactly as a Run does.
    cuts: tuple | None = None


@dataclass
class LargeResult:
    """A finished zarr segmentation (:meth:`Session.run_to_zarr <.session.Session.run_to_zarr>`);
    ``embeddings``/``labels`` are lazy views of it."""

    path: Path
    embeddings: da.Array
    labels: da.Array
    diagnostics: dict
    foreground: bool
    origin: tuple | None = None
    resampled: Resampled | None = None  # set when the network ran on a resampled image
    note: str = ""            # what the user should know (e.g. the tile was snapped to n·f^l)


def open_large_result(path: Path, plan, model, image, device) -> LargeResult:
    """Lazy views of a finished zarr output of ``image`` (the diagnostics computed on demand)."""
    import zarr

    from ..files.ngff import LABELS
    from . import diagnostics
    from .segment import ATTRS

    group = zarr.open_group(str(path), mode="r")
    embeddings = da.from_zarr(group["embeddings"])
    shape = embeddings.shape[1:]
    resampled = None
    if tuple(shape) != tuple(image.shape):  # the network ran on the image resampled
        resampled = Resampled((0,) * len(shape), tuple(shape), tuple(image.shape),
                              shape[-1] / image.shape[-1])
        source = image if isinstance(image, da.Array) else da.from_array(image)
        image = rescale.resize_image(source, shape=shape)
    # Lazy: napari computes the reference only for the tiles of the slice on screen.
    per_slice = model.geometry.ndim < len(shape)
    diag = diagnostics.run_diagnostics(embeddings, image, model, plan, device=device, per_slice=per_slice)
    record = group.attrs[ATTRS]
    note = record.get("tile_note", "") if isinstance(record, dict) else ""
    return LargeResult(path, embeddings, da.from_zarr(group[LABELS]), diag, "foreground" in group,
                       resampled=resampled, note=str(note))


def on_image_grid(result: SegmentResult, labels, image_region=None, dtype=np.int32) -> np.ndarray:
    """Labels (or any map) of a (possibly resampled) result on the image's own pixels."""
    if result.resampled is None:
        return labels
    r = result.resampled
    if image_region is None:
        origin = result.origin or (0,) * len(r.image_shape)
        image_region = Region(origin, result.labels.shape).to_slices()
    out = rescale.labels_on_image_grid(labels, r.origin, r.working_shape, image_region, r.image_shape)
    return np.ascontiguousarray(out, dtype=dtype)


def labels_on_image_grid(result: SegmentResult, labels, image_region=None) -> np.ndarray:
    """Instances of a (possibly resampled) result on the image's own pixels, numbered 1..n.

    Objects thinner than the step between the sampled voxels are lost on the way back to the
    image's grid; numbering the rest again keeps "n objects" (the largest id, as the status
    line says it) equal to the objects the instances layer holds.
    """
    if result.resampled is None:
        return labels
    from skimage.segmentation import relabel_sequential

    out = on_image_grid(result, labels, image_region)
    return relabel_sequential(out)[0].astype(np.int32, copy=False)


def object_features(result: SegmentResult, image, spacing) -> dict:
    """The measurement table of an in-memory result (see :func:`napari_shiftseg.imaging.measure.measure`),
    for the instances layer's ``features``: sizes in the layer's world units (its scale)."""
    region = Region(result.origin or (0,) * result.labels.ndim, result.labels.shape).to_slices()
    channels = np.ndim(image) - result.labels.ndim  # 1: a multi-channel model's channels first
    intensities = np.asarray(image[(slice(None),) * channels + region], dtype=np.float32)
    embeddings = None
    if result.resampled is None:  # on the image's grid: the mean embedding of each object too
        embeddings = result.embeddings[:result.embeddings.shape[0] - int(result.foreground)]
    table = measure(result.labels, intensities, spacing=spacing, embeddings=embeddings,
                    channel_axis=0 if channels else None)
    if result.origin is not None:  # a preview: positions in the whole image's pixels
        for axis, o in zip(AXES[result.labels.ndim], result.origin):
            for key in (f"centroid_{axis}", f"bbox_{axis}_start", f"bbox_{axis}_stop"):
                table[key] = table[key] + o
    return table


def embeddings_on_image_grid(result: SegmentResult) -> np.ndarray:
    """The result's embeddings (foreground channel excluded) on the labels' pixels."""
    emb = result.embeddings[:result.embeddings.shape[0] - int(result.foreground)]
    if result.resampled is None:
        return emb
    return np.stack([on_image_grid(result, channel, dtype=np.float32) for channel in emb])


def split(result: SegmentResult, labels, object_id: int, bandwidth: float, min_size: int):
    """Split one object of the (possibly hand-edited) ``labels`` of ``result``."""
    from .proofread import split_object

    if isinstance(result.embeddings, da.Array) or hasattr(result, "path"):
        raise ShiftSegError("split works on results kept in memory; this one is on disk")
    if tuple(np.shape(labels)) != tuple(result.labels.shape):
        raise ShiftSegError("the instances layer no longer matches the last run; run again")
    return split_object(labels, embeddings_on_image_grid(result), object_id, bandwidth,
                        min_size=min_size)

