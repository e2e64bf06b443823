"""Segment widget: image -> embeddings, instances and tiling diagnostics, in a worker thread.

The output tile is snapped live to n·f^l (the exact-stitching rule), with the input window it
needs and the compute amplification shown next to it. Preview computes only the visible region
(current slice for volumes); Run computes the whole image tile by tile with a progress bar and
turns into a Cancel button meanwhile. Layer data is built in the worker too; layers are added
(or updated in place) only after the job has succeeded, one per event-loop turn, so an error or
a cancel never leaves a half-made layer and the viewer stays responsive. Results larger than the
memory budget (plugin settings) go through a zarr group on disk and are shown lazily. Re-cluster
reruns mean-shift on the cached embeddings without another network pass.

The segmentation settings (bandwidth, foreground threshold, min size, post-processing) are
those the chosen model file records (:meth:`SegmentationSettings.of`, tuned at the end of
training), put into the controls whenever a model is chosen; what the user edits there is
passed on as one :class:`SegmentationSettings`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from .. import rescale
from .._errors import ShiftSegError
from ..settings import SegmentationSettings
from . import _axes, _gc, _large, _layers, _pipeline
from ._common import (
    ScrollsWhenDocked,
    device_choice,
    inference_settings,
    layer_choices,
    set_running,
    watch_layers,
    wrap,
)
from ._model_choice import ModelChooser
from ._proofread import ProofreadPanel
from ._worker import Task

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _LayerAxes:
    """The source layer's scale and translate (all its axes), for results given its time axis."""

    scale: tuple
    translate: tuple


@dataclasses.dataclass(frozen=True)
class _Destination:
    """Where a run's results go: the part of the image (``region``, None = all), the layers'
    ``target`` (name, placement, embedding size, capacity), a zarr ``out_path`` for results
    over the memory budget, and ``time_point`` (index, layer axes) for one time point of a
    series, whose results get the series' time axis."""

    region: tuple | None
    target: tuple
    out_path: Any = None
    time_point: tuple | None = None


def _segment_job(report, cancel, image, model_path, params, cache, dest: _Destination):
    """Worker thread: segment (in memory, or via zarr when ``dest.out_path``), then build the
    layer data (colours etc.) off the GUI thread."""
    region, target, out_path, time_point = dest.region, dest.target, dest.out_path, dest.time_point
    if out_path is None:
        result = _pipeline.segment(report, cancel, image, model_path, params, cache, region)
    else:
        result = _large.segment(report, cancel, image, model_path, params, out_path)
    name, where, embed_dim, capacity = target
    layers = _layers.segmentation_layers(result, name, where, embed_dim, capacity)
    if out_path is None:  # results on disk are not measured here: `shiftseg segment --table`
        _with_features(layers, _pipeline.object_features(result, image, where["scale"]))
    if time_point is not None:
        layers = _axes.with_time_axis(layers, _axes.TIME, *time_point)
        result = TimeSeriesResult(int(np.max(result.labels, initial=0)), 1)
    return result, layers


def _release_gc(*_args) -> None:
    _gc.release()


def _with_features(layers, table) -> None:
    """Put the measurement table on the instances layer (napari shows it on hover)."""
    for _, kwargs, layer_type in layers:
        if layer_type == "labels":
            kwargs["features"] = table


@dataclasses.dataclass
class TimeSeriesResult:
    """Every time point of a layer segmented (no re-cluster or proofreading: one per point)."""

    n_objects: int
    points: int
    origin: None = None


def _time_job(report, cancel, image, model_path, params, cache, target, layer_axes):
    """Worker thread: each time point on its own; layers stacked along the time axis, object
    ids numbered on from one point to the next."""
    name, where, embed_dim, capacity = target
    per_point, offset = [], 0
    for t in range(image.shape[0]):
        def point_report(done, total, what, t=t):
            report(done, total, f"time point {t + 1}/{image.shape[0]}: {what}")
        result = _pipeline.segment(point_report, cancel, image[t], model_path, params, cache)
        result.labels = np.where(result.labels > 0, result.labels + offset, 0).astype(np.int32)
        offset = max(offset, int(result.labels.max()))
        per_point.append(_layers.segmentation_layers(result, name, where, embed_dim, capacity))
    return TimeSeriesResult(offset, image.shape[0]), _axes.stack_time(per_point, layer_axes)


def _recluster_job(report, cancel, result, params, target, image):
    large = isinstance(result, _large.LargeResult)
    labels, clusters = (_large if large else _pipeline).recluster(report, cancel, result, params)
    name, where = target[:2]
    layers = [_layers.result_layer(labels, "instances", name, where)]
    if clusters is not None:
        layers.append(_layers.result_layer(clusters, "clusters", name, _layers.network_placement(result, where)))
    if not large:
        measured = dataclasses.replace(result, labels=labels)
        _with_features(layers, _pipeline.object_features(measured, image, where["scale"]))
    return labels, layers


class SegmentWidget(ScrollsWhenDocked, Container):
    """Dock widget: segment an image layer with a shiftseg model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        settings = inference_settings()
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.model = ModelChooser()
        self.tile = SpinBox(label="output tile", value=settings.tile_size, min=0, max=4096)
        # 0 shows "auto": the largest n·f^l tile that fits the device's memory (devices.auto_tile).
        self.tile.native.setSpecialValueText("auto")
        self.tile_info = Label(label="tile")
        self.device = device_choice(settings)
        self.mode = ComboBox(label="stitching", choices=list(_pipeline.MODES), value="exact")
        # A layer with one axis more than the model: z (slice by slice), time or channels.
        self.extra_axis = ComboBox(label="extra axis", choices=self._extra_choices)
        self.extra_index = SpinBox(label="channel", value=0, min=0, max=2**31 - 1)
        # A multi-channel model: which of the layer's channels it takes, in its order.
        self.channels = LineEdit(label="channels", value="")
        self.channels.tooltip = "e.g. 0,2 (blank: the first ones, as many as the model takes)"
        # cellpose's "diameter": 0 shows "auto" (estimated by a first pass); the image is
        # resampled to the object size the model learnt (rescale.py).
        self.diameter = FloatSpinBox(label="object diameter (px)", value=0.0, min=0.0, max=10000.0,
                                     step=1.0)
        self.diameter.native.setSpecialValueText("auto")
        self.isotropic = CheckBox(value=True, text="resample to isotropic voxels (the layer's scale)")
        self.isotropic.tooltip = ("for stacks whose z step is larger than the pixel size: a 3D "
                                  "model sees cubic voxels (on by default; nothing changes for a "
                                  "layer whose scale is cubic); labels stay on the layer's grid")
        # Values come from the model (_use_model_settings below); the ranges only need to hold
        # anything SegmentationSettings accepts.
        self.bandwidth = FloatSpinBox(label="bandwidth", min=0.001, max=1000.0, step=0.1)
        self.fg_threshold = FloatSpinBox(label="foreground threshold", min=0.001, max=0.999, step=0.05)
        self.min_size = SpinBox(label="min size (voxels)", min=0, max=2**31 - 1)
        self.merge_distance = FloatSpinBox(label="merge fragments closer than", min=0.0,
                                           max=1000.0, step=0.1)
        self.absorb_small = CheckBox(text="absorb small fragments")
        self.fill_holes = CheckBox(text="fill holes")
        post = Container(widgets=[self.absorb_small, self.fill_holes], layout="horizontal",
                         labels=False)
        for box in (self.bandwidth, self.fg_threshold, self.merge_distance):
            box.native.setDecimals(3)  # tuned values have three decimals
        self.merge_distance.tooltip = "embedding distance; 0 = off"
        self.preview_button = PushButton(text="Preview")
        self.run_button = PushButton(text="Run")
        self.recluster_button = PushButton(text="Re-cluster", enabled=False)
        buttons = Container(widgets=[self.preview_button, self.run_button, self.recluster_button],
                            layout="horizontal", labels=False)
        # Proofreading after a run (split / merge); napari's label tools do the rest.
        self.proofread = ProofreadPanel(self)
        self.split_id, self.split_button = self.proofread.split_id, self.proofread.split_button
        self.merge_ids, self.merge_button = self.proofread.merge_ids, self.proofread.merge_button
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="idle")
        super().__init__(widgets=[self.image, self.model, self.tile, self.tile_info, self.device,
                                  self.mode, self.extra_axis, self.extra_index, self.channels,
                                  self.diameter,
                                  self.isotropic,
                                  self.bandwidth, self.fg_threshold, self.min_size,
                                  self.merge_distance, post, buttons, self.proofread, self.progress,
                                  self.status], scrollable=True)
        wrap(self.tile_info, self.status)
        self._cache = _pipeline.ModelCache()
        self._result: _pipeline.SegmentResult | None = None
        self._source = self._next_source = None  # the array the cached result was computed from
        self._target: tuple | None = None  # (layer name, placement, E, capacity) of the cached result
        self._next_target: tuple | None = None
        self._pending: list = []  # layer tuples still to add, then the final status line
        # The layer the running job (and its pending layers) comes from, and that of the cached
        # result: removing it stops the job, or the adding of its layers.
        self._next_layer = self._result_layer = None
        self._task = Task(self.native, viewer=napari_viewer, progress=self._on_progress,
                          busy=self._on_busy, failed=self._on_failed,
                          cancelled=self._on_cancelled, done=self._on_done)
        self.preview_button.changed.connect(self.preview)
        self.run_button.changed.connect(self._run_or_cancel)
        self.recluster_button.changed.connect(self.recluster)
        self.model.choice.changed.connect(self._update_tile_info)
        self.model.choice.changed.connect(self._use_model_settings)
        self.tile.changed.connect(self._update_tile_info)
        self.mode.changed.connect(self._update_tile_info)
        self.image.changed.connect(self._image_changed)
        self.model.choice.changed.connect(self._update_extra_axis)
        self.extra_axis.changed.connect(self._update_extra_axis)
        watch_layers(napari_viewer, self)
        self._image_changed()
        self._use_model_settings()
        if settings.idle_gc:
            # Full garbage collections (~0.3 s with torch loaded) wait for idle moments instead
            # of landing in a slider drag (_gc.py); stopped when the widget goes.
            _gc.install(napari_viewer, self)
            self.native.destroyed.connect(_release_gc)
        # The first run's one-time costs, paid in the background now, not when Run is pressed.
        # A plain daemon thread, not a Task: it has no result to show and must not outlive
        # the widget's Qt objects through signals (the widget may close before it ends).
        self._warm_done = threading.Event()
        self._warm_thread = None
        self._warm_up()

    def _warm_up(self) -> None:
        try:
            params = _pipeline.SegmentParams(settings=self.settings(), device=self.device.value)
            path = self.model.path
        except ShiftSegError:
            return  # an unreadable model: the first Run says why
        done, cache = self._warm_done, self._cache

        def job():
            try:
                _pipeline.warm_up(None, threading.Event(), path, params, cache)
                done.set()
            except Exception:  # noqa: BLE001 - a failed warm-up only means a slower first run
                log.debug("shiftseg warm-up failed", exc_info=True)

        self._warm_thread = threading.Thread(target=job, name="shiftseg-warm-up", daemon=True)
        self._warm_thread.start()

    @property
    def warmed_up(self) -> bool:
        """The warm-up run (started when the widget opened) has finished."""
        return self._warm_done.is_set()

    @property
    def warming_up(self) -> bool:
        """The warm-up run is still going."""
        return self._warm_thread is not None and self._warm_thread.is_alive()

    # ---- public API (used by the reader, the Train widget and tests) -------------------
    @property
    def busy(self) -> bool:
        """A job is running or its layers are still being added."""
        return self._task.busy or bool(self._pending)

    def set_model_file(self, path) -> bool:
        """Select a .safetensors model file and its settings; shows an error and keeps the old
        one if bad."""
        if not self.model.select_file(path):
            return False
        # Also when the same file is chosen again (e.g. trained again under the same name):
        # the choice did not change, but the file's settings may have.
        self._use_model_settings()
        return True

    def settings(self) -> SegmentationSettings:
        """The segmentation settings in the controls (the model's, as edited by the user)."""
        return SegmentationSettings(
            bandwidth=self.bandwidth.value, fg_threshold=self.fg_threshold.value,
            min_size=self.min_size.value, merge_distance=self.merge_distance.value,
            absorb_small=self.absorb_small.value, fill_holes=self.fill_holes.value)

    def run(self) -> None:
        """Segment the whole image."""
        self._start(region=None)

    def preview(self) -> None:
        """Segment only the visible region (the current slice of a volume)."""
        layer = self._layer()
        geometry = self.model.geometry
        if layer is None or geometry is None:
            self._start(region=None)  # reports the missing layer/model
            return
        # Layer axis a is world axis a + offset; napari keeps the visible data box of the
        # displayed axes in layer.corner_pixels (updated whenever the canvas draws).
        offset = self._viewer.dims.ndim - layer.ndim
        displayed = set(self._viewer.dims.displayed)
        corners = np.asarray(layer.corner_pixels)
        visible = {a: (int(corners[0, a]), int(corners[1, a]) + 1) for a in range(layer.ndim)
                   if a + offset in displayed}
        point = layer.world_to_data(self._viewer.dims.point)
        self._start(region=_pipeline.preview_region(layer.data.shape, geometry, visible, point))

    def cancel(self) -> None:
        self._task.cancel()

    def recluster(self) -> None:
        """Mean-shift again (new bandwidth / min size) on the cached embeddings."""
        if self._result is None or self.busy:
            return
        try:
            params = self._params()
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        # Re-clustering needs only the cached result; its image, while still there, is watched
        # as a run's would be.
        self._next_layer = self._result_layer if self._in_viewer(self._result_layer) else None
        self._task.start(_recluster_job, self._result, params, self._target, self._source,
                         input_layers=(self._next_layer,) if self._next_layer else ())

    # ---- proofreading (see _proofread.ProofreadPanel) ---------------------------------
    def split(self) -> None:
        self.proofread.split()

    def merge(self) -> None:
        self.proofread.merge()

    # ---- running ---------------------------------------------------------------------
    def _layer(self):
        return self.image.value

    def _in_viewer(self, layer) -> bool:
        return any(shown is layer for shown in self._viewer.layers)

    def _params(self) -> _pipeline.SegmentParams:
        return _pipeline.SegmentParams(settings=self.settings(), tile=self._tile(),
                                       device=self.device.value, mode=self.mode.value,
                                       diameter=self.diameter.value or "auto",
                                       voxel_size=self._voxel_size())

    def _voxel_size(self) -> tuple | None:
        """The layer's scale on the model's axes, when isotropic resampling is asked for."""
        layer, g = self._layer(), self.model.geometry
        if not self.isotropic.value or layer is None or g is None:
            return None
        scale, _ = _axes.model_axes(layer.scale, layer.translate, self.extra_axis.value,
                                    bool(getattr(layer, "rgb", False)))
        return tuple(float(v) for v in scale)[-g.ndim:]

    def _tile(self) -> int | tuple | str:
        """The n·f^l tile in exact mode; naive and blend use the request as given (on purpose);
        "auto" for the largest tile that fits the device."""
        g = self.model.geometry
        if self.tile.value == 0:
            return "auto"  # decided in the worker, for the device that runs
        return g.snap_tile(self.tile.value) if g is not None and self.mode.value == "exact" else self.tile.value

    def _start(self, region) -> None:
        if self.busy:
            return
        layer = self._layer()
        kind = self.extra_axis.value
        try:
            if layer is None:
                raise ShiftSegError("add or select an image layer first")
            config = self.model.metadata().config
            if getattr(layer, "multiscale", False):
                raise ShiftSegError(f"layer {layer.name!r} is multiscale; add its full-resolution "
                                    "level as a layer")
            rgb = bool(getattr(layer, "rgb", False))
            _axes.check(layer.name, layer.ndim, rgb, config.geometry.ndim, kind, config.in_channels)
            index = self._time_point(layer) if kind == _axes.TIME else self.extra_index.value
            picks = (_axes.parse_channels(self.channels.value, config.in_channels)
                     if kind == _axes.CHANNELS else None)
            data = _axes.select(layer.data, kind, index, rgb, picks)
            if region is not None and kind in (_axes.TIME, _axes.CHANNEL, _axes.CHANNELS) and not rgb:
                region = region[1:]      # the preview of the selected time point or channel
            budget = inference_settings().memory_budget_gb
            if region is not None:
                _pipeline.check_budget([s.stop - s.start for s in region], config.out_channels, budget)
            if kind == _axes.TIME_ALL:
                _pipeline.check_budget(data.shape, config.out_channels, budget)
            params = self._params()
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        origin = None if region is None else tuple(s.start for s in region)
        # Where the new result will go; the cached result (and its target) stay until it is done.
        scale, translate = _axes.model_axes(layer.scale, layer.translate, kind, rgb)
        self._next_target = (layer.name, _layers.placement(scale, translate, origin),
                             config.embed_dim, config.geometry.capacity)
        self._next_layer = layer
        if kind == _axes.TIME_ALL:
            self._task.start(_time_job, data, self.model.path, params, self._cache,
                             self._next_target, _LayerAxes(tuple(layer.scale), tuple(layer.translate)),
                             input_layers=(layer,))
            return
        out_path = None  # results that do not fit the budget go to zarr and are shown lazily
        if region is None and not _pipeline.fits_budget(data.shape, config.out_channels, budget):
            out_path = _large.output_path(f"{layer.name}-{kind}-{index}", self.model.path,
                                          params.tile, params.mode, params.diameter,
                                          params.voxel_size)
        time_point = (index, _LayerAxes(tuple(layer.scale), tuple(layer.translate))) \
            if kind == _axes.TIME else None
        self._next_source = data  # what was segmented: measured again after re-cluster / edits
        self._task.start(_segment_job, data, self.model.path, params, self._cache,
                         _Destination(region, self._next_target, out_path, time_point),
                         input_layers=(layer,))

    def _time_point(self, layer) -> int:
        """The time point on screen (the layer's first axis)."""
        point = layer.world_to_data(self._viewer.dims.point)
        return int(np.clip(round(float(point[0])), 0, layer.data.shape[0] - 1))

    def _extra_choices(self, _widget=None) -> list[str]:
        """What the image layer's extra axis can be for the chosen model (a callable, so that
        magicgui keeps the user's choice when layers come and go)."""
        layer = self.image.value if hasattr(self, "image") else None
        g = self.model.geometry if hasattr(self, "model") else None
        if layer is None or g is None:
            return [_axes.NONE]
        return _axes.choices(layer.ndim, bool(getattr(layer, "rgb", False)), g.ndim,
                             self.model.in_channels) or [_axes.NONE]

    def _update_extra_axis(self, *_) -> None:
        """Offer what the layer's extra axis can be; hidden when it has none."""
        self.extra_axis.reset_choices()
        self.extra_axis.visible = list(self.extra_axis.choices) != [_axes.NONE]
        self.extra_index.visible = self.extra_axis.value == _axes.CHANNEL
        self.channels.visible = self.extra_axis.value == _axes.CHANNELS

    def _run_or_cancel(self) -> None:
        if self._task.busy:
            self.cancel()
        else:
            self.run()

    # ---- task signals (GUI thread) -----------------------------------------------------
    def _on_busy(self, busy: bool) -> None:
        set_running(self.run_button, busy, "Run", others=(self.preview_button, self.recluster_button))
        if busy and not self._pending:
            self.progress.value, self.status.value = 0, "starting…"
        self.recluster_button.enabled = not busy and self._result is not None
        self.proofread.set_enabled(not busy and isinstance(self._result, _pipeline.SegmentResult))

    def _on_progress(self, done: int, total: int, what) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.status.value = f"{what}: {done}/{total}"

    def _on_failed(self, message: str) -> None:
        self.status.value = "failed"
        show_error(f"shiftseg: {message}")

    def _on_cancelled(self) -> None:
        self.status.value = "cancelled"
        self.progress.value = 0
        show_info("shiftseg: cancelled; no layers were changed")

    def _on_done(self, outcome) -> None:
        result, layers = outcome
        if isinstance(result, (_pipeline.SegmentResult, _large.LargeResult)):
            self._result, self._target = result, self._next_target
            self._source, self._result_layer = self._next_source, self._next_layer
            done = "done" + ("" if result.origin is None else " (preview)") + (
                f": results in {result.path}" if isinstance(result, _large.LargeResult)
                else f": {int(result.labels.max())} objects") + (
                f" ({result.note})" if getattr(result, "note", "") else "")
        elif isinstance(result, TimeSeriesResult):
            # One time point's (or every point's) layers carry the time axis; re-cluster and
            # proofreading work on single images, so they are off until the next plain run.
            self._result = None
            done = (f"done: {result.n_objects} objects" if result.points == 1 else
                    f"done: {result.n_objects} objects over {result.points} time points")
        else:  # re-clustered labels
            self._result.labels = result
            done = "re-clustered" + ("" if hasattr(result, "compute") else f": {int(result.max())} objects")
        # One layer per event-loop turn: adding a layer costs napari 0.1-0.3 s (layer controls,
        # vispy node), and the viewer stays responsive in between. Buttons stay off meanwhile.
        self._pending = [*layers, done]
        self._on_busy(True)
        self.run_button.enabled = False
        self.status.value = "adding layers…"
        QTimer.singleShot(0, self._add_next)

    def _add_next(self) -> None:
        if self._task.closed:
            self._pending = []  # the widget is gone (its Qt objects too): nowhere to add or say
            return
        if self._next_layer is not None and not self._in_viewer(self._next_layer):
            # The image was removed, or the viewer is closing (napari removes every layer
            # first, and fails on layers added then): its remaining layers are not added.
            self._pending = ["stopped: the image layer was removed before all its layers were added"]
        item = self._pending.pop(0)
        if isinstance(item, tuple):
            _layers.show_layers(self._viewer, [item])
            QTimer.singleShot(0, self._add_next)
            return
        self.run_button.enabled = True
        self._on_busy(False)
        self.status.value = item

    # ---- live geometry -----------------------------------------------------------------
    def _use_model_settings(self, *_) -> None:
        """Put the settings recorded in the model file (tuned for its embeddings) into the controls."""
        try:
            settings = self.model.settings()
            learnt = rescale.model_diameter(self.model.metadata().meta)
        except ShiftSegError:
            return  # an unreadable model is reported by the tile info line, and cannot run
        self.diameter.enabled = bool(learnt)
        self.diameter.tooltip = (
            f"diameter of the objects in this image; the model learnt ~{learnt:g} px and the image "
            "is resampled to that size ('auto': estimated by a first pass)" if learnt else
            "this model records no object size: images are segmented as imaged")
        for name, value in settings.to_meta().items():
            try:
                getattr(self, name).value = value
            except ValueError:  # beyond a control's range: say so rather than run with another
                show_error(f"shiftseg: {self.model.path.name} records {name} = {value}, outside "
                           f"{getattr(self, name).range}; set it by hand")

    def _image_changed(self, *_) -> None:
        self.model.follow_layer(self._layer())
        self._update_extra_axis()
        self._update_tile_info()

    def _update_tile_info(self, *_) -> None:
        g = self.model.geometry
        if g is None:
            self.tile_info.value = "choose a readable model"
            return
        self.tile_info.value = _pipeline.describe_tile(g, self.tile.value, self.mode.value)
