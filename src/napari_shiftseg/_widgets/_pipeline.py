"""The Segment widget's in-memory jobs: plain functions of arrays, no Qt, no napari.

Each job has the :mod:`._worker` signature ``job(report, cancel, ...)``. They only chain core
functions (predict -> compute with progress -> cluster -> label -> diagnostics) and return a
:class:`~._results.SegmentResult`; :mod:`._layers` turns that into layer data (still in the
worker thread), and the widgets only add the finished layers on the GUI thread. The training
jobs are in :mod:`._train_jobs`, the tiling inspection in :mod:`._inspect_jobs`.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np

from ..imaging import rescale
from ..imaging.normalize import recorded_normalization

# Imported here, not inside the jobs: the widget module imports this one when it opens, so the
# (slow, GIL-holding) first imports never happen in a worker while the user waits on the GUI.
from ..inference import diagnostics, instances, predict
from ..network.devices import resolve_device
from ..network.modelio import load_model
from ..network.settings import SegmentationSettings
from ..network.spatial import position_grid
from ..util import progress
from ..util._errors import ShiftSegError
from ..util.region import Region
from ._common import file_stamp
from ._results import Resampled, SegmentResult, labels_on_image_grid

__all__ = ["MODES", "SegmentParams", "ModelCache", "Resampled", "SegmentResult", "check_image",
           "fits_budget", "check_budget", "preview_region", "segment", "warm_up", "recluster",
           "labels_on_image_grid", "window_cuts", "keep_cut_objects"]

MODES = ("exact", "naive", "blend")


@dataclass
class SegmentParams:
    settings: SegmentationSettings  # how embeddings become instances (the model's, as edited)
    tile: int = 128          # n·f^l in exact mode; as requested in naive/blend mode
    device: str = "auto"
    mode: str = "exact"
    # Object diameter in the image (px): "auto" (estimated by a first pass), a number, or None
    # (segment as imaged). Used when the model records the diameter it learnt (rescale.py).
    diameter: float | str | None = None
    # Voxel size of the model's axes (the layer's scale) when the image is to be resampled to
    # isotropic voxels first (3D; a z step larger than the pixel size gets more planes).
    voxel_size: tuple | None = None


class ModelCache:
    """Keeps the last loaded model, keyed by path, file time and device (worker-thread use)."""

    def __init__(self):
        self._key = None
        self._model = None
        self._lock = threading.Lock()

    def get(self, path, device: str = "auto"):

        path = Path(path)
        dev = resolve_device(device)
        key = (str(path), *file_stamp(path), str(dev))
        with self._lock:  # the widget's warm-up may use the cache from another thread
            if key != self._key:
                self._model, self._key = load_model(path, device=dev), key
            return self._model

    def loaded_path(self) -> Path | None:
        """The file of the model held (None: none yet)."""
        return None if self._key is None else Path(self._key[0])


def check_image(layer, model_ndim: int):
    """Refuse multiscale/RGB layers and dimensionality mismatches with a one-line message."""
    name, data = layer.name, layer.data
    if getattr(layer, "multiscale", False):
        raise ShiftSegError(f"layer {name!r} is multiscale; add its full-resolution level as a layer")
    if getattr(layer, "rgb", False):
        raise ShiftSegError(f"layer {name!r} is an RGB image; shiftseg models take one channel")
    if data.ndim != model_ndim:
        raise ShiftSegError(
            f"layer {name!r} is {data.ndim}D but the model is {model_ndim}D; pick a {data.ndim}D model"
        )
    return data


def result_bytes(shape, out_channels: int) -> int:
    """Memory a run keeps: embeddings, RGB, foreground, labels and four diagnostic maps."""
    return int(np.prod(shape)) * 4 * (out_channels + 3 + 1 + 1 + 4)


def fits_budget(shape, out_channels: int, budget_gb: float) -> bool:
    return result_bytes(shape, out_channels) <= budget_gb * 1e9


def check_budget(shape, out_channels: int, budget_gb: float) -> None:
    if not fits_budget(shape, out_channels, budget_gb):
        need = result_bytes(shape, out_channels) / 1e9
        raise ShiftSegError(
            f"a preview of {tuple(shape)} needs about {need:.1f} GB, more than the memory budget "
            f"of {budget_gb:g} GB (napari Preferences > shiftseg); zoom in, or use Run"
        )


def preview_region(shape, geometry, visible, point) -> tuple[slice, ...]:
    """Region of the image a preview computes: the visible part, the current slice elsewhere.

    ``visible`` is ``{axis: (start, stop)}`` for the displayed axes (data pixels), ``point`` the
    current data position on every axis. The region is widened to whole f^l cells (origins on the
    global grid), so the preview's tiles are the same tiles a full run computes; non-displayed
    axes get the one f^l cell that holds the current slice.
    """
    region = []
    for axis, size in enumerate(shape):
        if axis in visible:
            start, stop = visible[axis]
        else:
            start = int(np.clip(math.floor(point[axis]), 0, size - 1))
            stop = start + 1
        region.append(slice(int(start), int(stop)))
    return geometry.snap_region(region, shape)


def segment(report, cancel, image, model_path, params: SegmentParams, cache: ModelCache,
            region: tuple[slice, ...] | None = None) -> SegmentResult:
    """Embeddings, instances and diagnostics of ``image`` (or of ``image[region]``).

    When the model records the object diameter it learnt and ``params.diameter`` differs from
    it (or, for "auto", a first pass finds objects of another size), the network runs on the
    image resampled to the model's scale; the labels come back on the image's grid.
    """
    model = cache.get(model_path, params.device)
    multi = model.config.in_channels > 1  # ``image`` is then channel-first (C, *spatial)
    # The normalisation the model was trained with, from statistics of the WHOLE image (as a
    # full run uses), computed once for the run and its reference (and the resampled image).
    norm = recorded_normalization(image, model.meta, model.name, channels_first=multi)
    if multi:  # trained on the user's own images: segmented as imaged (as segment_to_zarr does)
        result = _segment_at(report, cancel, image, model, params, region, norm)
        if params.voxel_size is not None or params.diameter not in (None, "auto"):
            result.note = "; ".join(filter(None, [result.note, "multi-channel model: segmented as imaged "
                                                  "(no object-size or isotropic resampling)"]))
        return result
    ndim = model.geometry.ndim
    lead = image.ndim - ndim                      # a stack's slice axis is never resampled
    if params.diameter == "auto":
        report(0, 1, "object size")
    # The one rule of every run (rescale.plan_resampling): cubic voxels for a 3D model when the
    # layer's scale is anisotropic, and the object size measured from the image itself: the
    # WHOLE image, also for a preview, so that a preview resamples by Run's factor (measured on
    # the previewed slab it could differ: x1.84 against x1.46 on a crop of the spheres sample).
    plan = _PLANS.get(image, model, params, lead)
    notes = [plan.note] if plan.note else []
    factor = plan.factor
    result = _resampled_run(report, cancel, image, model, params, region, norm, plan.factors, factor)
    warning = _warning(result.labels, plan.diameter, ndim, params.voxel_size, lead)
    notes = [warning, *notes] if warning else notes
    result.note = "; ".join([result.note, *notes]) if result.note else "; ".join(notes)
    return result


class PlanCache:
    """The last image's resampling plan, so that previews of one image measure its object size
    once (the estimate reads up to 32 M voxels). Keyed by the image object (held weakly where it
    can be), its shape, the model and the size settings."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entry: tuple | None = None  # (image ref, key, plan)

    def get(self, image, model, params: SegmentParams, lead: int):
        # The model by what the plan reads of it: a model trained again under the same name may
        # record another object diameter.
        key = (tuple(image.shape), str(model.path), rescale.model_diameter(model), model.geometry,
               params.diameter, params.voxel_size, lead)
        with self._lock:
            if self._entry is not None:
                ref, stored, plan = self._entry
                if stored == key and ref() is image:
                    return plan
        plan = rescale.plan_resampling(image, model, params.diameter, voxel_size=params.voxel_size,
                                       lead=lead)
        try:
            ref = weakref.ref(image)
        except TypeError:  # not weakly referable: keep nothing rather than the data alive
            return plan
        with self._lock:
            self._entry = (ref, key, plan)
        return plan


_PLANS = PlanCache()


def _warning(labels, diameter, ndim: int, voxel_size, lead: int) -> str:
    """The nonsense guard's line for in-memory labels (sanity.py), "" when they look right."""
    from ..inference import sanity

    expected = sanity.expected_voxels(diameter, ndim, voxel_size,
                                      int(labels.shape[lead]) if ndim == 3 else None)
    count = len(np.unique(labels)) - 1  # the ids present, 0 aside
    if not expected or count < 1:
        return ""
    return sanity.result_warning(count, *sanity.label_statistics(labels), expected)


def warm_up(report, cancel, model_path, params: SegmentParams, cache: ModelCache) -> bool:
    """Segment a small random image once, so that the first real run does not pay the one-time
    costs (model load, the first network pass, the first clustering and labelling: kernel
    selection, thread pools, lazy imports). Measured before: the first Run after opening the
    widget stalled the viewer for 453 ms, later runs for 31-40 ms. Returns True."""
    model = cache.get(model_path, params.device)
    g = model.geometry
    del report  # silent: nobody watches a warm-up
    # The context plus two grid cells per axis: a small image that runs like a real one.
    shape = tuple(c + 2 * f for c, f in zip(g.contexts, g.grids))
    channels = (model.config.in_channels,) if model.config.in_channels > 1 else ()
    image = np.random.default_rng(0).random(channels + shape, dtype=np.float32)
    tile = g.snap_tile(tuple(2 * f for f in g.grids))
    params = SegmentParams(settings=params.settings, tile=tile, device=params.device)
    segment(lambda *_: None, cancel, image, model_path, params, cache)
    return True


def _resampled_run(report, cancel, image, model, params, region, norm, factors, factor):
    """A run on ``image`` resampled by ``factors`` per axis (as it is when all are 1)."""
    if all(f == 1.0 for f in factors):
        return _segment_at(report, cancel, image, model, params, region, norm)
    shape = tuple(image.shape)
    working_shape = rescale.working_shape(shape, factors)
    working = rescale.resize_image(da.asarray(image), shape=working_shape)  # lazy
    image_region = region or tuple(slice(0, n) for n in shape)
    working_part = None if region is None else model.geometry.snap_region(
        rescale.working_region(region, shape, working_shape), working_shape)
    result = _segment_at(report, cancel, working, model, params, working_part, norm)
    result.resampled = Resampled(result.origin or (0,) * len(shape), working_shape, shape, factor)
    result.labels = labels_on_image_grid(result, result.labels, image_region)
    result.origin = None if region is None else tuple(r.start for r in region)
    return result


def _segment_at(report, cancel, image, model, params: SegmentParams, region, norm) -> SegmentResult:
    g = model.geometry
    lead = (slice(None),) * int(model.config.in_channels > 1)  # a multi-channel image's channels
    channel_axis = 0 if lead else None
    spatial = tuple(image.shape[len(lead):])
    if region is None:
        data, inner, grown = image, None, None
    else:
        # A preview: the region plus its context predicted, then the region cut out: the
        # preview equals the full run there.
        wanted = Region.from_slices(region, spatial)
        context = wanted.with_context(g, spatial)
        grown = context.to_slices()
        data = image[lead + grown]
        inner = (slice(None),) + wanted.relative_to(context).to_slices()
    per_slice = g.ndim < len(spatial)     # a 2D model on a stack: slice by slice
    # One plan for the run: the prediction, the diagnostics and the note to the user.
    plan = predict.predict_plan(data, model, params.tile, params.mode, channel_axis, per_slice, params.device)
    embeddings = predict.predict_embeddings(data, model, plan=plan, device=params.device, normalization=norm,
                                            per_slice=per_slice, channel_axis=channel_axis)
    (embeddings,) = progress.compute(embeddings, progress=lambda d, t: report(d, t, "tiles"),
                                     cancel=cancel)
    # Seams = where stitched output departs from whole-image output (an exact run, other borders).
    diag = diagnostics.run_diagnostics(embeddings, data, model, plan, device=params.device, normalization=norm,
                                       per_slice=per_slice, channel_axis=channel_axis)
    diag = dict(zip(diag, progress.compute(*diag.values(), cancel=cancel)))
    if inner is not None:
        embeddings = embeddings[inner]
        diag = {kind: array[inner[1:]] for kind, array in diag.items()}
        if model.config.embedding == "spatial":
            # Spatial embeddings hold positions in the predicted array (the grown crop): shift
            # them to the image's own positions, which a full run adds.
            d = g.ndim
            shift = position_grid((1,) * d, model.config.position_scale,
                                  context.offset[context.ndim - d:])
            embeddings[:d] += shift.reshape((d,) + (1,) * (embeddings.ndim - 1))
    cuts = None if region is None else window_cuts(region, spatial)
    labels, clusters, note = _label(report, cancel, embeddings, params, model.config.foreground_head, cuts)
    origin = None if region is None else tuple(s.start for s in region)
    note = "; ".join(filter(None, [note, plan.message]))
    return SegmentResult(np.ascontiguousarray(embeddings), labels, diag, origin,
                         model.config.foreground_head, note, clusters=clusters, cuts=cuts)


def window_cuts(region, shape) -> tuple:
    """Per axis, whether ``region`` cuts the image of ``shape`` below and above."""
    return tuple((r.start > 0, r.stop < n) for r, n in zip(region, shape))


def keep_cut_objects(labels: np.ndarray, min_size: int, cuts=None) -> tuple[np.ndarray, int]:
    """Drop objects below ``min_size`` except those touching a face the window cuts.

    A preview is a window (in 3D a slab a few planes thick): objects it cuts are only partly
    inside, so the model's min size (whole objects) would drop most of them. ``cuts`` (per
    axis, low and high side; default: every face) says which faces are cuts. Returns the
    labels and how many cut objects were kept below the min size.
    """
    from skimage.segmentation import relabel_sequential

    sizes = np.bincount(labels.ravel())
    border = np.zeros(len(sizes), bool)
    cuts = cuts or ((True, True),) * labels.ndim
    for axis in range(labels.ndim):
        for side, face in ((0, labels.take(0, axis=axis)), (1, labels.take(-1, axis=axis))):
            if cuts[axis][side]:
                border[np.unique(face)] = True
    small = sizes < min_size
    small[0] = False
    drop = small & ~border
    kept_cut = int((small & border).sum())
    out = np.where(drop[labels], 0, labels)
    return relabel_sequential(out)[0].astype(np.int32, copy=False), kept_cut


def _label(report, cancel, embeddings, params: SegmentParams, foreground: bool,
           cuts: tuple | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(instances, the cluster of every voxel, a note for the user); ``cuts``: a preview's
    window (:func:`window_cuts`), None for a whole image."""

    # segment_instances' two steps, apart so mean-shift can run on the chosen device and a
    # cancel is seen in between.
    settings = params.settings
    clustering = instances.cluster_embeddings(embeddings, settings.bandwidth, settings.fg_threshold,
                                              foreground=foreground,
                                              device=str(resolve_device(params.device)))
    if cancel.is_set():
        raise progress.Cancelled()
    # Blocks of a few hundred thousand voxels: labelling reports progress and uses both cores.
    side = 512 if embeddings.ndim == 3 else 96
    blocks = da.from_array(embeddings, chunks=(-1,) + (side,) * (embeddings.ndim - 1))
    min_size = settings.min_size
    # Preview: the size filter runs after labelling, sparing objects the window cuts (with
    # absorb_small the min size also decides what is absorbed, so it stays in the labelling).
    spare_cut = cuts is not None and any(any(c) for c in cuts) and not settings.absorb_small
    lazy_labels = instances.label_instances(blocks, clustering, 0 if spare_cut else min_size,
                                            merge_distance=settings.merge_distance or None,
                                            absorb_small=settings.absorb_small, fill_holes=settings.fill_holes)
    lazy_clusters = instances.assign_clusters(blocks, clustering)
    labels, clusters = progress.compute(lazy_labels, lazy_clusters, progress=lambda d, t: report(d, t, "labels"),
                                        cancel=cancel)
    labels = labels.astype(np.int32, copy=False)
    # Objects are connected pieces of embedding clusters: saying how many clusters there were
    # shows the paper's point on inseparable inputs (one cluster, many objects).
    notes = [f"{clustering.n_clusters} embedding cluster(s)"]
    if spare_cut:
        labels, kept = keep_cut_objects(labels, min_size, cuts)
        if kept:
            notes.append(f"{kept} object(s) cut by the preview's edge kept although below "
                         f"min size {min_size}")
    return labels, clusters, "; ".join(notes)


def recluster(report, cancel, result: SegmentResult, params: SegmentParams):
    """Mean-shift + labelling again on the cached embeddings (no network pass): (instances on
    the image's grid, clusters on the embeddings' grid)."""
    labels, clusters, _ = _label(report, cancel, result.embeddings, params, result.foreground,
                                 result.cuts)
    return labels_on_image_grid(result, labels), clusters
