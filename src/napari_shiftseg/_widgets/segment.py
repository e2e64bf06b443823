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
those the chosen model file records, put into the controls whenever a model is chosen
(:mod:`._segment_controls`). The jobs and their status lines are Qt-free (:mod:`._segment_jobs`);
proofreading (split, merge, undo) is :mod:`._proofread`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..inference.results import SegmentResult
from ..inference.segment_options import SegmentOptions
from ..inference.session import Session, fits_budget
from ..network.settings import SegmentationSettings
from ..util._errors import ShiftSegError
from . import _axes, _gc, _large, _layers
from . import _segment_jobs as jobs
from ._common import ModelCache, ScrollsWhenDocked, inference_settings, layer_choices, set_running, watch_layers, wrap
from ._model_choice import ModelChooser
from ._proofread import ProofreadPanel
from ._segment_controls import SegmentControls
from ._worker import Task

if TYPE_CHECKING:
    import napari


# The jobs, by the names a run starts them with (looked up then, so that tests can wrap them).
_segment_job, _time_job, _recluster_job = jobs.segment_job, jobs.time_job, jobs.recluster_job


def _release_gc(*_args) -> None:
    _gc.release()


class SegmentWidget(ScrollsWhenDocked, Container):
    """Dock widget: segment an image layer with a shiftseg model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        settings = inference_settings()
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.model = ModelChooser()
        self.controls = SegmentControls(settings, self.model, self._layer)
        for name in SegmentControls.NAMES:  # tile, device, ..., bandwidth: the widget's API
            setattr(self, name, getattr(self.controls, name))
        self.preview_button = PushButton(text="Preview")
        self.run_button = PushButton(text="Run")
        self.recluster_button = PushButton(text="Re-cluster", enabled=False)
        buttons = Container(widgets=[self.preview_button, self.run_button, self.recluster_button],
                            layout="horizontal", labels=False)
        # Proofreading after a run (split / merge / undo); napari's label tools do the rest.
        self.proofread = ProofreadPanel(self)
        self.split_id, self.split_button = self.proofread.split_id, self.proofread.split_button
        self.merge_ids, self.merge_button = self.proofread.merge_ids, self.proofread.merge_button
        self.undo_button = self.proofread.undo_button
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="idle")
        super().__init__(widgets=[self.image, self.model, self.controls, buttons, self.proofread,
                                  self.progress, self.status], scrollable=True)
        wrap(self.status)
        self._cache = ModelCache()
        # The last run's session (image, model, options, result, edit history): re-cluster and
        # proofreading go to it.
        self._session: Session | None = None
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
        self.image.changed.connect(self._image_changed)
        watch_layers(napari_viewer, self)
        self._image_changed()
        self.controls.use_model_settings()
        if settings.idle_gc:
            # Full garbage collections (~0.3 s with torch loaded) wait for idle moments instead
            # of landing in a slider drag (_gc.py); stopped when the widget goes.
            _gc.install(napari_viewer, self)
            self.native.destroyed.connect(_release_gc)
        # The first run's one-time costs, paid in the background now, not when Run is pressed.
        self._warm_thread = self._warm_done = None
        self._warm_up()

    def _warm_up(self) -> None:
        try:
            params = SegmentOptions(settings=self.settings(), device=self.device.value)
            path = self.model.path
        except ShiftSegError:
            return  # an unreadable model: the first Run says why
        self._warm_thread, self._warm_done = jobs.start_warm_up(path, params, self._cache)

    @property
    def warmed_up(self) -> bool:
        """The warm-up run (started when the widget opened) has finished."""
        return self._warm_done is not None and self._warm_done.is_set()

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
        self.controls.use_model_settings()
        return True

    def settings(self) -> SegmentationSettings:
        """The segmentation settings in the controls (the model's, as edited by the user)."""
        return self.controls.settings()

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
        self._start(region=jobs.visible_region(self._viewer, layer, geometry))

    def cancel(self) -> None:
        self._task.cancel()

    def recluster(self) -> None:
        """Mean-shift again (new bandwidth / min size) on the cached embeddings."""
        if self._session is None or self._session.result is None or self.busy:
            return
        try:
            params = self._params()
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        # Re-clustering needs only the cached result; its image, while still there, is watched
        # as a run's would be.
        self._next_layer = self._result_layer if self._in_viewer(self._result_layer) else None
        self._task.start(_recluster_job, self._session, params.settings, self._target,
                         input_layers=(self._next_layer,) if self._next_layer else ())

    # ---- proofreading (see _proofread.ProofreadPanel) ---------------------------------
    def split(self) -> None:
        self.proofread.split()

    def merge(self) -> None:
        self.proofread.merge()

    def undo(self) -> None:
        """Take back the last split or merge."""
        self.proofread.undo()

    # ---- running ---------------------------------------------------------------------
    def _layer(self):
        return self.image.value

    def _in_viewer(self, layer) -> bool:
        return any(shown is layer for shown in self._viewer.layers)

    @property
    def _result(self):
        """The last run's result (None before any)."""
        return None if self._session is None else self._session.result

    def _params(self) -> SegmentOptions:
        return self.controls.params()

    def _start(self, region) -> None:
        if self.busy:
            return
        layer = self._layer()
        kind = self.extra_axis.value
        try:
            if layer is None:
                raise ShiftSegError("add or select an image layer first")
            config = self.model.metadata().config
            index = self._time_point(layer) if kind == _axes.TIME else self.extra_index.value
            budget = inference_settings().memory_budget_gb
            data, region = jobs.select_input(layer, kind, index, self.channels.value, config, region, budget)
            params = self._params()
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        origin = None if region is None else tuple(s.start for s in region)
        # Where the new result will go; the cached result (and its target) stay until it is done.
        scale, translate = _axes.model_axes(layer.scale, layer.translate, kind,
                                            bool(getattr(layer, "rgb", False)))
        self._next_target = (layer.name, _layers.placement(scale, translate, origin),
                             config.embed_dim, config.geometry.capacity)
        self._next_layer = layer
        if kind == _axes.TIME_ALL:
            self._task.start(_time_job, data, self.model.path, params, self._cache,
                             self._next_target, jobs.LayerAxes(tuple(layer.scale), tuple(layer.translate)),
                             input_layers=(layer,))
            return
        out_path = None  # results that do not fit the budget go to zarr and are shown lazily
        if region is None and not fits_budget(data.shape, config.out_channels, budget):
            out_path = _large.output_path(f"{layer.name}-{kind}-{index}", self.model.path,
                                          params.tile, params.mode, params.diameter,
                                          params.voxel_size)
        time_point = (index, jobs.LayerAxes(tuple(layer.scale), tuple(layer.translate))) \
            if kind == _axes.TIME else None
        self._task.start(_segment_job, data, self.model.path, params, self._cache,
                         jobs.Destination(region, self._next_target, out_path, time_point),
                         input_layers=(layer,))

    def _time_point(self, layer) -> int:
        """The time point on screen (the layer's first axis)."""
        point = layer.world_to_data(self._viewer.dims.point)
        return int(np.clip(round(float(point[0])), 0, layer.data.shape[0] - 1))

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
        self.proofread.set_enabled(not busy and isinstance(self._result, SegmentResult))

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
        result, layers, objects = outcome
        if isinstance(result, Session):
            self._session, self._target, self._result_layer = result, self._next_target, self._next_layer
        elif isinstance(result, jobs.TimeSeriesResult):
            # One time point's (or every point's) layers carry the time axis; re-cluster and
            # proofreading work on single images, so they are off until the next plain run.
            self._session = None
        # (re-clustered labels: the session holds them already)
        done = jobs.done_message(result, objects)
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
        if not item.startswith("stopped"):  # the last stage's reports may stop short of its total
            self.progress.value = self.progress.max

    # ---- following the image ------------------------------------------------------------
    def _image_changed(self, *_) -> None:
        note = self.model.follow_layer(self._layer())
        if note and not self.busy:
            self.status.value = note  # e.g. a paper-demo sample: which model, and why
        self.controls.update_extra_axis()
        self.controls.update_tile_info()
