"""One segmentation of one image: the one way to segment, behind the CLI, the widgets and evaluate.

A :class:`Session` owns an image, a model and one typed
:class:`~napari_shiftseg.inference.segment_options.SegmentOptions` (settings, tile, mode, object
size, voxel size, mean-shift seeding), and the resampling plan made from them once
(:func:`~napari_shiftseg.imaging.rescale.plan_resampling`, the rule of every run). It offers

- :meth:`~Session.preview` of a region, computed with the tiles a run cuts there, so the preview
  equals the run inside it;
- :meth:`~Session.run`, the whole image in memory, and :meth:`~Session.run_to_zarr`, a
  resumable OME-Zarr output (a time series too, ids numbered on);
- :meth:`~Session.recluster`: other settings on the kept embeddings, no network pass;
- :meth:`~Session.split`, :meth:`~Session.merge` and :meth:`~Session.undo`: proofreading with
  an undo history;
- :meth:`~Session.measurements`: the per-object table.

Long calls take ``report(done, total, what)`` and a ``cancel`` event (set it to stop; the call
raises :class:`~napari_shiftseg.util.progress.Cancelled` and keeps the session as it was). The
Segment and Sweep widgets, ``shiftseg segment`` and ``evaluate`` and the demo all drive a
session; the widgets keep only Qt. :mod:`.segment` keeps the zarr storage and its resume.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np

from ..imaging import rescale
from ..imaging.normalize import recorded_normalization
from ..network.devices import resolve_device
from ..network.settings import SegmentationSettings
from ..network.spatial import position_grid
from ..util import progress
from ..util._errors import ShiftSegError
from ..util.region import Region
from . import diagnostics, instances, predict, size_check
from .proofread import EditHistory, merge_objects
from .results import (
    LargeResult,
    Resampled,
    SegmentResult,
    labels_on_image_grid,
    object_features,
    open_large_result,
)
from .results import split as split_result
from .segment_options import SegmentOptions

__all__ = ["MODES", "WHOLE", "Session", "result_bytes", "fits_budget", "check_budget",
           "preview_region", "window_cuts", "keep_cut_objects", "warm_up"]

MODES = ("exact", "naive", "blend")
#: ``tile=WHOLE``: one tile covering the image, i.e. whole-image inference (what evaluate uses:
#: small images, no tile overhead; exact tiles give the same embeddings).
WHOLE = "whole"

Report = Callable[[int, int, str], None]


def _silent(done: int, total: int, what: str) -> None:
    return None


class Session:
    """One image segmented by one model with one set of options (see the module docstring).

    Parameters
    ----------
    image : array-like
        2D or 3D like the model (a 3D stack for a 2D model: slice by slice); channel-first
        (C, *spatial) for a multi-channel model. Held as given (numpy, dask, zarr).
    model : Model, path or None
        A loaded model (:func:`~napari_shiftseg.network.modelio.load_model`). Only
        :meth:`run_to_zarr` also takes a file, a bundled model's name or None (the bundled
        default), loaded there for the image's dimensionality.
    options : SegmentOptions, optional
        Tile (``WHOLE`` for whole-image inference), mode, device, settings (None: the model's
        recorded ones), object diameter, voxel size and clustering; keywords change single
        fields (``Session(img, model, tile=64)``).
    """

    def __init__(self, image, model, options: SegmentOptions | None = None, **overrides):
        options = options or SegmentOptions()
        self.options = options.with_overrides(**overrides) if overrides else options
        self.image = image
        self.model = model
        self._settings: SegmentationSettings | None = None  # set by recluster
        self.result: SegmentResult | LargeResult | None = None
        self.history = EditHistory()

    @property
    def settings(self) -> SegmentationSettings:
        """The segmentation settings: the options' (default: the model's recorded ones), or
        the last :meth:`recluster`'s."""
        return self._settings or self.options.settings_for(self.model)

    # ---- running ------------------------------------------------------------------------
    def run(self, report: Report = _silent, cancel: threading.Event | None = None,
            maps: bool = True) -> SegmentResult:
        """The whole image in memory. ``maps``: also the diagnostics (seams, stitch check) and
        each voxel's cluster, which the widgets show (evaluate needs only the labels)."""
        return self._keep(self._compute(None, report, cancel or threading.Event(), maps))

    def preview(self, region, report: Report = _silent, cancel: threading.Event | None = None,
                maps: bool = True) -> SegmentResult:
        """``image[region]`` (slices, snapped to whole f^l cells by :func:`preview_region`): its
        context is predicted too and cut away, so the preview equals a run there."""
        return self._keep(self._compute(tuple(region), report, cancel or threading.Event(), maps))

    def run_to_zarr(self, out_path, report: Report = _silent, cancel: threading.Event | None = None,
                    stage: Callable[[str], None] | None = None, client=None, time_point=None):
        """A resumable OME-Zarr output (:func:`~napari_shiftseg.inference.segment.segment_to_zarr`;
        an image file with a time axis: :func:`~napari_shiftseg.inference.series.segment_series`,
        ids numbered on). Returns the zarr group; :meth:`open_result` shows it lazily."""
        from ..files.io import time_points

        what = {"name": "tiles"}

        def on_stage(name: str) -> None:
            what["name"] = name
            if stage is not None:
                stage(name)

        kwargs = dict(progress=lambda d, t: report(d, t, what["name"]), cancel=cancel, stage=on_stage,
                      client=client)
        # A model given by name is loaded by segment_to_zarr, which resolves its settings.
        options = self.options if self._settings is None else replace(self.options, settings=self._settings)
        config = getattr(self.model, "config", None)
        if config is not None and config.in_channels > 1 and options.channel is None:
            # An in-memory channel-first array holding the model's channels, in its order.
            options = replace(options, channel=list(range(config.in_channels)))
        if isinstance(self.image, (str, Path)) and time_points(self.image) > 1:
            from .series import segment_series

            return segment_series(self.image, out_path, self.model, options, time_point=time_point, **kwargs)
        from .segment import segment_to_zarr

        return segment_to_zarr(self.image, out_path, self.model, options, **kwargs)

    def open_result(self, out_path) -> LargeResult:
        """The finished output of :meth:`run_to_zarr` as lazy arrays, kept as this session's result."""
        from .segment import stored_plan

        plan = stored_plan(out_path, self.model.geometry)
        return self._keep(open_large_result(Path(out_path), plan, self.model, self.image, self.options.device))

    def run_time_series(self, report: Report = _silent, cancel: threading.Event | None = None):
        """Each time point (the image's first axis) in memory on its own, object ids numbered on
        from one point to the next. Yields one :class:`SegmentResult` per point."""
        offset, count = 0, self.image.shape[0]
        for t in range(count):
            point = Session(self.image[t], self.model, replace(self.options, settings=self.settings))

            def point_report(done, total, what, t=t):
                report(done, total, f"time point {t + 1}/{count}: {what}")

            result = point.run(point_report, cancel)
            result.labels = np.where(result.labels > 0, result.labels + offset, 0).astype(np.int32)
            offset = max(offset, int(result.labels.max(initial=0)))
            yield result

    def recluster(self, settings: SegmentationSettings | None = None, report: Report = _silent,
                  cancel: threading.Event | None = None):
        """Mean-shift and labelling again on the kept embeddings with ``settings`` (default: the
        session's): (instances on the image's grid, clusters on the embeddings' grid, None for
        a result on disk). Starts a new edit history."""
        if self.result is None:
            raise ShiftSegError("run or preview first: there are no embeddings to cluster again")
        cancel = cancel or threading.Event()
        settings = settings or self.settings
        if isinstance(self.result, LargeResult):
            from .segment import recluster as recluster_zarr

            recluster_zarr(self.result.path, settings, self.options.clustering, cancel=cancel,
                           stage=lambda name: report(0, 1, name))
            import uuid

            import zarr

            from ..files.ngff import LABELS

            # A new dask name, so nothing cached for the old labels is shown again.
            stored = zarr.open_group(str(self.result.path), mode="r")[LABELS]
            labels, clusters = da.from_zarr(stored, name=f"shiftseg-labels-{uuid.uuid4().hex}"), None
        else:
            labels, clusters, _ = self._label(report, cancel, self.result.embeddings, settings,
                                              self.result.foreground, self.result.cuts, True)
            labels = labels_on_image_grid(self.result, labels)
        self._settings = settings
        self.result.labels = labels
        self.history.clear()
        return labels, clusters

    # ---- proofreading -------------------------------------------------------------------
    def split(self, object_id: int, labels=None, bandwidth: float | None = None):
        """Split one object of ``labels`` (default: the result's; give the edited labels to keep
        hand edits) by re-clustering its embeddings, by default with half the bandwidth:
        (new labels, the ids it became)."""
        before = self._labels(labels)
        assert isinstance(self.result, SegmentResult)  # checked by _labels
        bandwidth = self.settings.bandwidth / 2 if bandwidth is None else bandwidth
        after, ids = split_result(self.result, before, int(object_id), bandwidth, self.settings.min_size)
        if len(ids) > 1:
            self._edit(before, after)
        return after, ids

    def merge(self, ids, labels=None):
        """Merge the objects ``ids`` of ``labels`` (default: the result's) into the smallest id:
        (new labels, the id kept)."""
        before = self._labels(labels)
        after, kept = merge_objects(before, ids)
        self._edit(before, after)
        return after, kept

    def undo(self, labels=None):
        """Take back the last split or merge: (indices, values) to write into ``labels``
        (default: the result's, written here), as :meth:`Patch.changes
        <napari_shiftseg.inference.proofread.Patch.changes>` gives them."""
        if not self.history:
            raise ShiftSegError("nothing to undo since the last run")
        target = self._labels(labels)
        indices, values = self.history.pop().changes(target)
        values = values.astype(target.dtype, copy=False)
        if labels is None:
            target[indices] = values
        return indices, values

    def measurements(self, spacing=None) -> dict:
        """Per-object table of the in-memory result (size, centroid, bbox, intensities, mean
        embedding; :func:`~napari_shiftseg.imaging.measure.measure`), sizes in ``spacing`` units."""
        if not isinstance(self.result, SegmentResult):
            raise ShiftSegError("measurements are made of results kept in memory; for one on disk "
                                "use `shiftseg segment --table`")
        spacing = spacing if spacing is not None else (1.0,) * self.result.labels.ndim
        return object_features(self.result, self.image, spacing)

    # ---- inside -------------------------------------------------------------------------
    def _keep(self, result):
        self.result = result
        self.history.clear()
        return result

    def _labels(self, labels) -> np.ndarray:
        if not isinstance(self.result, SegmentResult):
            raise ShiftSegError("proofreading works on results kept in memory; run or preview first")
        return self.result.labels if labels is None else np.asarray(labels)

    def _edit(self, before, after) -> None:
        self.history.record(before, after)
        assert self.result is not None  # checked by _labels
        self.result.labels = after

    def resampling(self, lead: int, cancel: threading.Event | None = None):
        """The run's resampling plan (object size from the whole image, checked by the model on
        a central crop for 3D models, cubic voxels): made once per image, also for every preview
        of it (:class:`PlanCache`)."""
        return _PLANS.get(self.image, self.model, self.options, lead, cancel)

    def _compute(self, region, report, cancel, maps: bool) -> SegmentResult:
        image, model = self.image, self.model
        multi = model.config.in_channels > 1  # ``image`` is then channel-first (C, *spatial)
        if multi:  # trained on the user's own images: segmented as imaged (as segment_to_zarr does)
            norm = recorded_normalization(image, model.meta, model.name, channels_first=True)
            result = self._at(report, cancel, image, region, norm, maps)
            if self.options.voxel_size is not None or self.options.diameter not in (None, "auto"):
                result.note = "; ".join(filter(None, [result.note, "multi-channel model: segmented as "
                                                      "imaged (no object-size or isotropic resampling)"]))
            return result
        ndim = model.geometry.ndim
        lead = image.ndim - ndim                      # a stack's slice axis is never resampled
        if self.options.diameter == "auto":
            report(0, 1, "object size")
        # The one rule of every run (rescale.plan_resampling), measured on the WHOLE image, also
        # for a preview, so that a preview resamples by Run's factor (measured on the previewed
        # slab it could differ: x1.84 against x1.46 on a crop of the spheres sample).
        plan = self.resampling(lead, cancel)
        result = self._resampled(report, cancel, region, plan.factors, plan.factor, maps)
        notes = [plan.note] if plan.note else []
        warning = _warning(result.labels, plan.diameter, ndim, self.options.voxel_size, lead)
        notes = [warning, *notes] if warning else notes
        result.note = "; ".join([result.note, *notes]) if result.note else "; ".join(notes)
        return result

    def _resampled(self, report, cancel, region, factors, factor, maps) -> SegmentResult:
        """A run on the image resampled by ``factors`` per axis (as it is when all are 1)."""
        image, model = self.image, self.model
        if all(f == 1.0 for f in factors):
            norm = recorded_normalization(image, model.meta, model.name)
            return self._at(report, cancel, image, region, norm, maps)
        shape = tuple(image.shape)
        working_shape = rescale.working_shape(shape, factors)
        working = rescale.resize_image(da.asarray(image), shape=working_shape)  # lazy
        # The normalisation the model was trained with (training normalises the image resampled
        # to its object size, segment_to_zarr the image the network sees), from statistics of the
        # WHOLE image, also for a preview, computed once for the run and its reference.
        norm = recorded_normalization(working, model.meta, model.name)
        image_region = region or tuple(slice(0, n) for n in shape)
        working_part = None if region is None else self.model.geometry.snap_region(
            rescale.working_region(region, shape, working_shape), working_shape)
        result = self._at(report, cancel, working, working_part, norm, maps)
        result.resampled = Resampled(result.origin or (0,) * len(shape), working_shape, shape, factor)
        result.labels = labels_on_image_grid(result, result.labels, image_region)
        result.origin = None if region is None else tuple(r.start for r in region)
        return result

    def _at(self, report, cancel, image, region, norm, maps: bool) -> SegmentResult:
        model, options = self.model, self.options
        g = model.geometry
        lead = (slice(None),) * int(model.config.in_channels > 1)  # a multi-channel image's channels
        channel_axis = 0 if lead else None
        spatial = tuple(image.shape[len(lead):])
        if region is None:
            data, inner, context = image, None, None
        else:
            # A preview: the region plus its context predicted, then the region cut out: the
            # preview equals the full run there.
            wanted = Region.from_slices(region, spatial)
            context = wanted.with_context(g, spatial)
            data = image[lead + context.to_slices()]
            inner = (slice(None),) + wanted.relative_to(context).to_slices()
        per_slice = g.ndim < len(spatial)     # a 2D model on a stack: slice by slice
        tile = g.cover(spatial[-g.ndim:]) if options.tile == WHOLE else options.tile
        # One plan for the run: the prediction, the diagnostics and the note to the user.
        plan = predict.predict_plan(data, model, tile, options.mode, channel_axis, per_slice, options.device)
        embeddings = predict.predict_embeddings(data, model, plan=plan, device=options.device, normalization=norm,
                                                per_slice=per_slice, channel_axis=channel_axis)
        (embeddings,) = progress.compute(embeddings, progress=lambda d, t: report(d, t, "tiles"), cancel=cancel)
        diag: dict = {}
        if maps:
            # Seams = where stitched output departs from whole-image output (an exact run, other borders).
            diag = diagnostics.run_diagnostics(embeddings, data, model, plan, device=options.device,
                                               normalization=norm, per_slice=per_slice, channel_axis=channel_axis)
            diag = dict(zip(diag, progress.compute(*diag.values(), cancel=cancel)))
        if inner is not None:
            embeddings = embeddings[inner]
            diag = {kind: array[inner[1:]] for kind, array in diag.items()}
            if model.config.embedding == "spatial" and context is not None:
                # Spatial embeddings hold positions in the predicted array (the grown crop): shift
                # them to the image's own positions, which a full run adds.
                d = g.ndim
                shift = position_grid((1,) * d, model.config.position_scale, context.offset[context.ndim - d:])
                embeddings[:d] += shift.reshape((d,) + (1,) * (embeddings.ndim - 1))
        cuts = None if region is None else window_cuts(region, spatial)
        labels, clusters, note = self._label(report, cancel, embeddings, self.settings,
                                             model.config.foreground_head, cuts, maps)
        origin = None if region is None else tuple(s.start for s in region)
        note = "; ".join(filter(None, [note, plan.message]))
        return SegmentResult(np.ascontiguousarray(embeddings), labels, diag, origin,
                             model.config.foreground_head, note, clusters=clusters, cuts=cuts)

    def _label(self, report, cancel, embeddings, settings: SegmentationSettings, foreground: bool,
               cuts: tuple | None, with_clusters: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(instances, the cluster of every voxel, a note for the user); ``cuts``: a preview's
        window (:func:`window_cuts`), None for a whole image."""
        # segment_instances' two steps, apart so mean-shift can run on the chosen device and a
        # cancel is seen in between.
        seeding = self.options.clustering
        clustering = instances.cluster_embeddings(embeddings, settings.bandwidth, settings.fg_threshold,
                                                  foreground, seeding,
                                                  device=str(resolve_device(self.options.device)),
                                                  position_scale=self.model.config.positions)
        if cancel.is_set():
            raise progress.Cancelled()
        # Blocks of a few hundred thousand voxels: labelling reports progress and uses both cores.
        side = 512 if embeddings.ndim == 3 else 96
        blocks = da.from_array(embeddings, chunks=(-1,) + (side,) * (embeddings.ndim - 1))
        min_size = settings.min_size
        # Preview: the size filter runs after labelling, sparing objects the window cuts (with
        # absorb_small the min size also decides what is absorbed, so it stays in the labelling).
        spare_cut = cuts is not None and any(any(c) for c in cuts) and not settings.absorb_small
        lazy = [instances.label_instances(blocks, clustering, 0 if spare_cut else min_size, seeding.connectivity,
                                          merge_distance=settings.merge_distance or None,
                                          absorb_small=settings.absorb_small, fill_holes=settings.fill_holes)]
        if with_clusters:
            lazy.append(instances.assign_clusters(blocks, clustering))
        computed = progress.compute(*lazy, progress=lambda d, t: report(d, t, "labels"), cancel=cancel)
        labels = computed[0].astype(np.int32, copy=False)
        clusters = computed[1] if with_clusters else None
        # Objects are connected pieces of embedding clusters: saying how many clusters there were
        # shows the paper's point on inseparable inputs (one cluster, many objects).
        notes = [f"{clustering.n_clusters} embedding cluster(s)"]
        if spare_cut:
            labels, kept = keep_cut_objects(labels, min_size, cuts)
            if kept:
                notes.append(f"{kept} object(s) cut by the preview's edge kept although below min size {min_size}")
        return labels, clusters, "; ".join(notes)


class PlanCache:
    """The last image's resampling plan, so that previews of one image measure its object size
    once (the estimate reads up to 32 M voxels). Keyed by the image object (held weakly where it
    can be), its shape, the model and the size options."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entry: tuple | None = None  # (image ref, key, plan)

    def get(self, image, model, options: SegmentOptions, lead: int, cancel=None):
        # The model by what the plan reads of it: a model trained again under the same name may
        # record another object diameter.
        key = (tuple(image.shape), str(model.path), rescale.model_diameter(model), model.geometry,
               options.diameter, options.voxel_size, lead)
        with self._lock:
            if self._entry is not None:
                ref, stored, plan = self._entry
                if stored == key and ref() is image:
                    return plan
        plan = rescale.plan_resampling(image, model, options.diameter, voxel_size=options.voxel_size, lead=lead,
                                       refine=None if lead else size_check.refiner(image, model, options, cancel))
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
    from . import sanity

    expected = sanity.expected_voxels(diameter, ndim, voxel_size, int(labels.shape[lead]) if ndim == 3 else None)
    count = len(np.unique(labels)) - 1  # the ids present, 0 aside
    if not expected or count < 1:
        return ""
    return sanity.result_warning(count, *sanity.label_statistics(labels), expected)


def result_bytes(shape, out_channels: int) -> int:
    """Memory an in-memory run keeps: embeddings, RGB, foreground, labels and four diagnostic maps."""
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


def warm_up(model, options: SegmentOptions) -> bool:
    """Segment a small random image once, so that the first real run does not pay the one-time
    costs (the first network pass, the first clustering and labelling: kernel selection, thread
    pools, lazy imports). Measured before: the first Run after opening the Segment widget
    stalled the viewer for 453 ms, later runs for 31-40 ms. Returns True."""
    g = model.geometry
    # The context plus two grid cells per axis: a small image that runs like a real one.
    shape = tuple(c + 2 * f for c, f in zip(g.contexts, g.grids))
    channels = (model.config.in_channels,) if model.config.in_channels > 1 else ()
    image = np.random.default_rng(0).random(channels + shape, dtype=np.float32)
    tile = g.snap_tile(tuple(2 * f for f in g.grids))
    Session(image, model, SegmentOptions(settings=options.settings_for(model), tile=tile,
                                         device=options.device)).run()
    return True
