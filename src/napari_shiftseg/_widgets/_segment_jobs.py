"""The Segment widget's worker-thread jobs and status lines: no Qt, no napari.

Each job has the :mod:`._worker` signature ``job(report, cancel, ...)``, drives one
:class:`~napari_shiftseg.inference.session.Session` (the one way to segment) and returns
``(outcome, layer tuples, objects)``: the session of a run, or the labels of a re-cluster; the
layer data is built in the worker too (colours, measurements), and ``objects`` is the number of
object ids the instances hold (None for results on disk, which are not read again to count
them). The widget only adds the layers and shows :func:`done_message`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import numpy as np

from ..inference.results import LargeResult, SegmentResult
from ..inference.session import Session, check_budget, preview_region, warm_up
from . import _axes, _layers

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LayerAxes:
    """The source layer's scale and translate (all its axes), for results given its time axis."""

    scale: tuple
    translate: tuple


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where a run's results go: the part of the image (``region``, None = all), the layers'
    ``target`` (name, placement, embedding size, capacity), a zarr ``out_path`` for results
    over the memory budget, and ``time_point`` (index, layer axes) for one time point of a
    series, whose results get the series' time axis."""

    region: tuple | None
    target: tuple
    out_path: Any = None
    time_point: tuple | None = None


@dataclasses.dataclass
class TimeSeriesResult:
    """Every time point of a layer segmented (no re-cluster or proofreading: one per point)."""

    n_objects: int
    points: int
    origin: None = None


def count_objects(labels) -> int | None:
    """How many object ids (> 0) in-memory ``labels`` hold; None for lazy (on-disk) labels."""
    if hasattr(labels, "compute"):
        return None
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def segment_job(report, cancel, image, model_path, options, cache, dest: Destination):
    """Segment (in memory, or via zarr when ``dest.out_path``), then build the layer data."""
    region, target, out_path, time_point = dest.region, dest.target, dest.out_path, dest.time_point
    name, where, embed_dim, capacity = target
    session = Session(image, cache.get(model_path, options.device), options)
    result: SegmentResult | LargeResult
    if out_path is None:
        result = session.run(report, cancel) if region is None else session.preview(region, report, cancel)
        layers = _layers.segmentation_layers(result, name, where, embed_dim, capacity)
        with_features(layers, session.measurements(where["scale"]))
    else:  # results on disk are not measured here: `shiftseg segment --table`
        session.run_to_zarr(out_path, report, cancel, stage=lambda name: report(0, 1, name))
        result = session.open_result(out_path)
        layers = _layers.segmentation_layers(result, name, where, embed_dim, capacity)
    objects = count_objects(result.labels)
    if time_point is not None:
        layers = _axes.with_time_axis(layers, _axes.TIME, *time_point)
        return TimeSeriesResult(int(np.max(result.labels, initial=0)), 1), layers, objects
    return session, layers, objects


def time_job(report, cancel, image, model_path, options, cache, target, layer_axes):
    """Each time point on its own; layers stacked along the time axis, object ids numbered on
    from one point to the next (:meth:`Session.run_time_series`)."""
    name, where, embed_dim, capacity = target
    session = Session(image, cache.get(model_path, options.device), options)
    per_point, last = [], 0
    for result in session.run_time_series(report, cancel):
        last = max(last, int(result.labels.max(initial=0)))
        per_point.append(_layers.segmentation_layers(result, name, where, embed_dim, capacity))
    return TimeSeriesResult(last, image.shape[0]), _axes.stack_time(per_point, layer_axes), None


def recluster_job(report, cancel, session: Session, settings, target):
    """Mean-shift and labelling again on the session's result: (labels, layers, objects)."""
    labels, clusters = session.recluster(settings, report, cancel)
    name, where = target[:2]
    layers = [_layers.result_layer(labels, "instances", name, where)]
    if clusters is not None:
        layers.append(_layers.network_layer(clusters, "clusters", name, session.result, where))
    if isinstance(session.result, SegmentResult):
        with_features(layers, session.measurements(where["scale"]))
    return labels, layers, count_objects(labels)


def with_features(layers, table) -> None:
    """Put the measurement table on the instances layer (napari shows it on hover)."""
    for _, kwargs, layer_type in layers:
        if layer_type == "labels":
            kwargs["features"] = table


def done_message(result, objects: int | None) -> str:
    """The status line for a finished job's ``result`` (see the jobs above)."""
    if isinstance(result, TimeSeriesResult):
        return (f"done: {result.n_objects} objects" if result.points == 1 else
                f"done: {result.n_objects} objects over {result.points} time points")
    if isinstance(result, Session):
        result = result.result
    if not isinstance(result, (SegmentResult, LargeResult)):  # re-clustered labels
        return "re-clustered" + ("" if objects is None else f": {objects} objects")
    where = (f": results in {result.path}" if isinstance(result, LargeResult)
             else f": {objects} objects")
    note = getattr(result, "note", "")
    return ("done" + ("" if result.origin is None else " (preview)") + where
            + (f" ({note})" if note else ""))


def start_warm_up(model_path, options, cache) -> tuple[threading.Thread, threading.Event]:
    """Run :func:`~napari_shiftseg.inference.session.warm_up` in a daemon thread: (the thread, an event set when done).

    A plain thread, not a Task: it has no result to show and must not outlive the widget's Qt
    objects through signals (the widget may close before it ends)."""
    done = threading.Event()

    def job():
        try:
            warm_up(cache.get(model_path, options.device), options)
            done.set()
        except Exception:  # noqa: BLE001 - a failed warm-up only means a slower first run
            log.debug("shiftseg warm-up failed", exc_info=True)

    thread = threading.Thread(target=job, name="shiftseg-warm-up", daemon=True)
    thread.start()
    return thread, done


def select_input(layer, kind: str, index: int, channels: str, config, region, budget_gb: float):
    """What a run segments of the image ``layer`` (its extra axis ``kind`` at ``index``, the
    model's ``channels`` as typed): (data, region on it). Raises ShiftSegError saying why not."""
    from ..util._errors import ShiftSegError

    if getattr(layer, "multiscale", False):
        raise ShiftSegError(f"layer {layer.name!r} is multiscale; add its full-resolution level as a layer")
    rgb = bool(getattr(layer, "rgb", False))
    _axes.check(layer.name, layer.ndim, rgb, config.geometry.ndim, kind, config.in_channels)
    picks = _axes.parse_channels(channels, config.in_channels) if kind == _axes.CHANNELS else None
    data = _axes.select(layer.data, kind, index, rgb, picks)
    if region is not None and kind in (_axes.TIME, _axes.CHANNEL, _axes.CHANNELS) and not rgb:
        region = region[1:]      # the preview of the selected time point or channel
    if region is not None:
        check_budget([s.stop - s.start for s in region], config.out_channels, budget_gb)
    if kind == _axes.TIME_ALL:
        check_budget(data.shape, config.out_channels, budget_gb)
    return data, region


def visible_region(viewer, layer, geometry) -> tuple[slice, ...]:
    """The part of ``layer`` a preview computes: what the canvas shows of the displayed axes,
    the current slice of the others (see :func:`~napari_shiftseg.inference.session.preview_region`)."""
    # Layer axis a is world axis a + offset; napari keeps the visible data box of the
    # displayed axes in layer.corner_pixels (updated whenever the canvas draws).
    offset = viewer.dims.ndim - layer.ndim
    displayed = set(viewer.dims.displayed)
    corners = np.asarray(layer.corner_pixels)
    visible = {a: (int(corners[0, a]), int(corners[1, a]) + 1) for a in range(layer.ndim)
               if a + offset in displayed}
    point = layer.world_to_data(viewer.dims.point)
    return preview_region(layer.data.shape, geometry, visible, point)
