"""Train widget: a U-Net on image + labels layers or on a synthetic generator.

The geometry fields (d, l, f, upsampling, padding) show live what they imply: f^l, capacity,
context, the valid input sizes and the input crop of the chosen training window, plus a warning
when the window is not larger than f^l (THEORY.md, result 4: such a model shows seams on the
f^l grid). Training runs in a worker thread with the current loss, a small loss plot and a
Cancel button; the model is saved as .safetensors and can be handed to the Segment widget.

Defaults are those of ``shiftseg train``: a spatial embedding head, augmentation, 25 % of the
annotations held out to pick the best checkpoint, and the segmentation settings tuned on that
part at the end and stored in the model (shown here afterwards; the Segment widget takes them
from the file). The training window is sized to the objects unless one is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from ..network.unet import UNetConfig
from ..training.train_options import TRAINING_DEFAULTS, TrainOptions, training_defaults
from ..util._errors import ShiftSegError
from . import _train_jobs
from ._common import PLUGIN, ScrollsWhenDocked, layer_choices, set_running, watch_layers, wrap
from ._train_controls import NetworkControls
from ._train_jobs import SYNTHETIC, LayerData, describe_validation, plot_losses, training_job
from ._worker import Task

if TYPE_CHECKING:
    import napari

LAYERS = "image + labels layers"
COMPLETE = "labels are complete"
PAINTED = "only the painted objects (+ margin)"
NEW = "a new network"
BUNDLED = "the bundled model (fine-tune)"
FROM_SEGMENT = "the Segment widget's model (fine-tune)"


class TrainWidget(ScrollsWhenDocked, Container):
    """Dock widget: train and save a shiftseg model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self.source = ComboBox(label="training data", choices=[LAYERS, *SYNTHETIC])
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.labels_layer = ComboBox(label="labels", choices=layer_choices(napari_viewer, Labels))
        # Sparse labels: where are they complete? Everywhere, around the painted objects, or in
        # a region drawn (Shapes) or painted (Labels) as its own layer.
        self.annotated = ComboBox(label="annotated", choices=self._annotated_choices)
        # Human in the loop: fine-tune the model the Segment widget uses on corrected labels.
        self.start_from = ComboBox(label="start from", choices=[NEW, BUNDLED, FROM_SEGMENT], value=BUNDLED)
        self.start_from.tooltip = ("a new network (geometry below), or continue the bundled nuclei "
                                   "model of the image's dimensionality or the model chosen in the "
                                   "Segment widget (its geometry and settings are kept); as in "
                                   "shiftseg train: the bundled model for layers, new for synthetic")
        self.network = NetworkControls()  # a new network's geometry and head, and the window
        for name in NetworkControls.NAMES:  # ndim, levels, ..., window: the widget's API
            setattr(self, name, getattr(self.network, name))
        # The same defaults as ``shiftseg train`` (one owner: train_options.training_defaults),
        # set for the start and dimensionality by _start_from_changed and _ndim_changed.
        self.steps = SpinBox(label="steps", value=TRAINING_DEFAULTS["steps"], min=1, max=10**6)
        self.batch_size = SpinBox(label="batch size", value=TRAINING_DEFAULTS["batch_size"], min=1, max=64)
        self.lr = FloatSpinBox(label="learning rate", value=TRAINING_DEFAULTS["lr"], min=1e-6, max=1e-1, step=1e-5)
        self.augment = CheckBox(text="augment (flips, contrast, gamma, blur, noise)", value=bool(TrainOptions.augment))
        self.validation = SpinBox(label="hold out for validation (%)",
                                  value=round(100 * TRAINING_DEFAULTS["validation"]), min=0, max=50)
        self.tune = CheckBox(text="tune segmentation settings on the held-out part", value=TrainOptions.tune)
        self.save_path = FileEdit(label="save as", mode="w", filter="*.safetensors",
                                  value=Path.home() / "shiftseg_model.safetensors")
        self.train_button = PushButton(text="Train")
        self.use_button = PushButton(text="Use in Segment", enabled=False)
        buttons = Container(widgets=[self.train_button, self.use_button], layout="horizontal", labels=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="idle")
        self.held_out = Label(label="held-out")
        super().__init__(widgets=[self.source, self.image, self.labels_layer, self.annotated,
                                  self.start_from, self.network, self.steps, self.batch_size, self.lr,
                                  self.augment, self.validation, self.tune, self.save_path, buttons,
                                  self.progress, self.status, self.held_out], scrollable=True)
        wrap(self.status, self.held_out)
        self.figure = Figure(figsize=(3, 1.6), tight_layout=True)
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(120)
        self.inner.layout().addWidget(self.canvas)
        self._losses: list[tuple[int, float]] = []
        self._validating = False
        self.saved_path: Path | None = None
        self._task = Task(self.native, viewer=napari_viewer, progress=self._on_progress,
                          busy=self._on_busy,
                          failed=lambda msg: self._finish("failed", show_error, msg),
                          cancelled=lambda: self._finish("cancelled", show_info, "cancelled; nothing saved"),
                          done=self._on_done)
        self.train_button.changed.connect(self._train_or_cancel)
        self.use_button.changed.connect(self.use_in_segment)
        for name in NetworkControls.GEOMETRY:
            getattr(self.network, name).changed.connect(self._update_geometry)
        self.source.changed.connect(self._source_changed)
        self.ndim.changed.connect(self._ndim_changed)
        # The labels layer itself is never offered as its own annotated region.
        self.labels_layer.changed.connect(self.annotated.reset_choices)
        self.image.changed.connect(self._source_changed)
        self.start_from.changed.connect(self._start_from_changed)
        self.validation.changed.connect(self._validation_changed)
        self._validation_changed()
        self._was_new, self._from_layers = True, True  # the controls' values up to here
        self._start_from_changed()
        watch_layers(napari_viewer, self)
        self._source_changed()

    # ---- public API --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._task.busy

    def config(self) -> UNetConfig:
        """The network ``shiftseg train`` would build with these options (one owner)."""
        return self.network.config()

    def _annotated_choices(self, _widget=None):
        regions = [(f"region: {layer.name}", layer) for layer in self._viewer.layers
                   if isinstance(layer, (Shapes, Labels)) and layer is not self.labels_layer.value]
        return [(COMPLETE, COMPLETE), (PAINTED, PAINTED), *regions]

    def annotated_region(self, shape):
        """What :func:`train.train` gets as ``annotated`` (None: the labels are complete)."""
        choice = self.annotated.value
        if choice in (COMPLETE, None):
            return None
        if choice == PAINTED:
            return "painted"
        if isinstance(choice, Shapes):   # drawn polygons / rectangles, rasterised on the labels
            return choice.to_labels(labels_shape=tuple(shape)) > 0
        return np.asarray(choice.data) > 0

    def training_window(self) -> int | None:
        """The window asked for; None = sized to the objects by :func:`train.train`."""
        return self.network.training_window()

    def segment_model(self):
        """The model chosen in the Segment widget (opened if needed), loaded; ShiftSegError if none."""
        from ..network.modelio import load_model

        _, segment = self._viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        if segment.model.path is None:
            raise ShiftSegError("choose a model in the Segment widget first")
        return load_model(segment.model.path)

    def bundled_model(self):
        """The bundled nuclei model of the chosen dimensionality, loaded."""
        from ..network.modelio import load_bundled

        return load_bundled(self.ndim.value)

    def options(self) -> TrainOptions:
        """The run the controls ask for (``shiftseg train``'s defaults for what they do not show)."""
        return TrainOptions.recommended(
            self.ndim.value, self._continued, steps=self.steps.value, lr=self.lr.value,
            batch_size=self.batch_size.value, output_window=self.training_window(),
            allow_small_window=self.allow_small.value, augment=self.augment.value,
            validation=self.validation.value / 100, tune=self.tune.value)

    def start(self) -> None:
        """Start training with the current settings."""
        if self._task.busy:
            return
        layers = self.source.value == LAYERS
        inputs = (self.image.value, self.labels_layer.value, self.annotated.value) if layers else ()
        try:
            init = {NEW: self.config, BUNDLED: self.bundled_model,
                    FROM_SEGMENT: self.segment_model}[self.start_from.value]()
            if layers and (self.image.value is None or self.labels_layer.value is None):
                raise ShiftSegError("choose an image layer and a labels layer (or synthetic data)")
            labels = self.labels_layer.value.data if layers else None
            data = (LayerData(self.image.value.data, labels, self.annotated_region(np.shape(labels)))
                    if layers else SYNTHETIC[self.source.value])
            job = training_job(init, self.options(), self.save_path.value, data)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        self._losses = []
        self._validating = bool(job.options.validation)
        self.held_out.value = ""
        # Looked up now, so that tests can wrap the job; removing an input layer stops it.
        self._task.start(_train_jobs.train_model, job, input_layers=inputs)

    def cancel(self) -> None:
        self._task.cancel()

    def use_in_segment(self) -> None:
        """Open the Segment widget with the model just trained."""
        if self.saved_path is None:
            return
        _, widget = self._viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        widget.set_model_file(self.saved_path)

    # ---- task signals ------------------------------------------------------------------
    def _train_or_cancel(self) -> None:
        if self._task.busy:
            self.cancel()
        else:
            self.start()

    def _on_busy(self, busy: bool) -> None:
        set_running(self.train_button, busy, "Train", others=(self.use_button,))
        if busy:
            self.progress.value, self.status.value = 0, "starting…"
        else:
            self.use_button.enabled = self.saved_path is not None

    def _on_progress(self, step: int, total: int, parts) -> None:
        self.progress.max = total
        self.progress.value = step
        loss = float(parts["loss"])
        self.status.value = f"step {step}/{total}  loss {loss:.4f}"
        if step == total and self._validating:
            # train() scores (and tunes) on the held-out part after the last step.
            self.status.value += " – scoring" + (" and tuning" if self.tune.value else "") + \
                " on the held-out part…"
        self._losses.append((step, loss))
        self._plot()

    def _on_done(self, result) -> None:
        path, history, meta = result
        self.saved_path = Path(path)
        self._losses = list(enumerate(history["loss"], start=1))
        self._plot()
        self.use_button.enabled = True
        self.status.value = f"saved {self.saved_path.name} (final loss {history['loss'][-1]:.4f})"
        self.held_out.value = describe_validation(meta, self.saved_path.name)
        show_info(f"shiftseg: model saved to {self.saved_path}")

    def _finish(self, status: str, notify, message: str) -> None:
        self.status.value = status
        notify(f"shiftseg: {message}")

    def _plot(self) -> None:
        plot_losses(self.axes, self._losses)
        self.canvas.draw_idle()

    # ---- live geometry -----------------------------------------------------------------
    def _source_changed(self, *_) -> None:
        from_layers = self.source.value == LAYERS
        self.image.visible = self.labels_layer.visible = self.annotated.visible = from_layers
        layer = self.image.value
        if from_layers and layer is not None and layer.data.ndim in (2, 3):
            self.ndim.value = layer.data.ndim  # new defaults only if it changes: edits stay
        if self.start_from.value != FROM_SEGMENT and from_layers != self._from_layers:
            self.start_from.value = BUNDLED if from_layers else NEW  # as shiftseg train starts
        self._from_layers = from_layers
        self._update_geometry()

    def _ndim_changed(self, *_) -> None:
        """The batch default of ``shiftseg train`` for the new dimensionality (the levels'
        default: NetworkControls)."""
        self.batch_size.value = training_defaults(self.ndim.value, self._continued)["batch_size"]

    @property
    def _continued(self) -> bool:
        return self.start_from.value != NEW

    def _start_from_changed(self, *_) -> None:
        """A continued model keeps its own network: its controls are then off."""
        new = self.start_from.value == NEW
        self.network.set_new(new)
        self.ndim.enabled = self.start_from.value != FROM_SEGMENT  # it picks the bundled model
        if new != self._was_new:  # new <-> continued: that start's steps and rate
            defaults = training_defaults(self.ndim.value, not new)
            self.steps.value, self.lr.value = defaults["steps"], defaults["lr"]
        self._was_new = new

    def _validation_changed(self, *_) -> None:
        self.tune.enabled = self.validation.value > 0  # tuning needs held-out annotations

    def _update_geometry(self, *_) -> None:
        ok = self.network.update_geometry()
        self.train_button.enabled = ok is not None and (ok or self._task.busy)
