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

from .._errors import ShiftSegError
from ..geometry import UNetGeometry
from ..settings import TRAINING_DEFAULTS, SegmentationSettings, training_defaults
from ..spatial import EMBEDDINGS
from ..train import NETWORK_DEFAULTS, default_training_window, network_config, network_defaults
from ..unet import UNetConfig
from . import _pipeline
from ._common import PLUGIN, ScrollsWhenDocked, layer_choices, set_running, watch_layers, wrap
from ._model_choice import describe_settings
from ._worker import Task

if TYPE_CHECKING:
    import napari

LAYERS = "image + labels layers"
COMPLETE = "labels are complete"
PAINTED = "only the painted objects (+ margin)"
NEW = "a new network"
BUNDLED = "the bundled model (fine-tune)"
FROM_SEGMENT = "the Segment widget's model (fine-tune)"
WARN_STYLE = "color: #e8a33d;"


def describe_validation(meta: dict, name: str) -> str:
    """The held-out AP@0.5 and the settings the model now records (tuned, if it was)."""
    record = meta.get("validation") or {}
    settings = describe_settings(SegmentationSettings.of_meta(meta, name))
    if "ap@0.5" not in record:
        return f"{record.get('held_out', 'no validation')}; settings: {settings}"
    tuned = record.get("tuned")
    score = (tuned or record)["ap@0.5"]
    return (f"AP@0.5 {score:.3f} (best step {record.get('best_step')}; "
            f"{record.get('held_out', 'held-out part')}); "
            f"{'tuned' if tuned else 'settings'}: {settings}")


class TrainWidget(ScrollsWhenDocked, Container):
    """Dock widget: train and save a shiftseg model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self.source = ComboBox(label="training data", choices=[LAYERS, *_pipeline.SYNTHETIC])
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
        self.ndim = ComboBox(label="d (dimensions)", choices=[2, 3], value=2)
        self.levels = SpinBox(label="l (levels)", value=3, min=1, max=5)
        self.factor = SpinBox(label="f (pooling)", value=2, min=2, max=4)
        self.upsampling = ComboBox(label="upsampling", choices=["learnt", "nearest"])
        self.padding = ComboBox(label="padding", choices=["valid", "same"])
        self.channels = SpinBox(label="base channels", value=16, min=1, max=128)
        self.embedding = ComboBox(label="embedding head", choices=list(EMBEDDINGS),
                                  value=NETWORK_DEFAULTS["embedding"])
        self.embedding.tooltip = ("spatial: position + predicted offset (no capacity limit); "
                                  "free: the paper's embeddings")
        self.position_scale = FloatSpinBox(label="position scale", min=0.001, max=10.0, step=0.05,
                                           value=NETWORK_DEFAULTS["position_scale"])
        self.position_scale.tooltip = "embedding units per pixel added to the spatial embedding"
        self.window = SpinBox(label="training window", value=32, min=1, max=1024)
        # On: train.train sizes the window to the objects; typing a window switches it off.
        self.auto_window = CheckBox(text="size the window to the objects", value=True)
        self.geometry_info = Label(label="sizes")
        self.warning = Label(label="")
        self.allow_small = CheckBox(text="allow window ≤ f^l (reproduces seams)", value=False)
        # The same defaults as ``shiftseg train`` (one owner: settings.training_defaults), set
        # for the start and dimensionality by _start_from_changed and _ndim_changed.
        self.steps = SpinBox(label="steps", value=TRAINING_DEFAULTS["steps"], min=1, max=10**6)
        self.batch_size = SpinBox(label="batch size", value=TRAINING_DEFAULTS["batch_size"], min=1, max=64)
        self.lr = FloatSpinBox(label="learning rate", value=TRAINING_DEFAULTS["lr"], min=1e-6, max=1e-1, step=1e-5)
        self.augment = CheckBox(text="augment (flips, contrast, gamma, blur, noise)", value=True)
        self.validation = SpinBox(label="hold out for validation (%)",
                                  value=round(100 * TRAINING_DEFAULTS["validation"]), min=0, max=50)
        self.tune = CheckBox(text="tune segmentation settings on the held-out part", value=True)
        self.save_path = FileEdit(label="save as", mode="w", filter="*.safetensors",
                                  value=Path.home() / "shiftseg_model.safetensors")
        self.train_button = PushButton(text="Train")
        self.use_button = PushButton(text="Use in Segment", enabled=False)
        buttons = Container(widgets=[self.train_button, self.use_button], layout="horizontal", labels=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="idle")
        self.held_out = Label(label="held-out")
        super().__init__(widgets=[self.source, self.image, self.labels_layer, self.annotated,
                                  self.start_from, self.ndim, self.levels,
                                  self.factor, self.upsampling, self.padding, self.channels,
                                  self.embedding, self.position_scale, self.window,
                                  self.auto_window, self.geometry_info, self.warning,
                                  self.allow_small, self.steps, self.batch_size, self.lr, self.augment,
                                  self.validation, self.tune, self.save_path, buttons,
                                  self.progress, self.status, self.held_out], scrollable=True)
        self.warning.native.setStyleSheet(WARN_STYLE)
        wrap(self.warning, self.geometry_info, self.status, self.held_out)
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
        self.window.changed.connect(self._window_typed)
        for w in (self.ndim, self.levels, self.factor, self.padding, self.window, self.allow_small,
                  self.auto_window):
            w.changed.connect(self._update_geometry)
        self.source.changed.connect(self._source_changed)
        self.ndim.changed.connect(self._ndim_changed)
        # The labels layer itself is never offered as its own annotated region.
        self.labels_layer.changed.connect(self.annotated.reset_choices)
        self.image.changed.connect(self._source_changed)
        self.embedding.changed.connect(self._embedding_changed)
        self.start_from.changed.connect(self._start_from_changed)
        self.validation.changed.connect(self._validation_changed)
        self._embedding_changed()
        self._validation_changed()
        self._was_new, self._from_layers = True, True  # the controls' values up to here
        self._start_from_changed()
        watch_layers(napari_viewer, self)
        self._source_changed()

    # ---- public API --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._task.busy

    def geometry(self) -> UNetGeometry:
        return UNetGeometry(ndim=self.ndim.value, levels=self.levels.value, factor=self.factor.value,
                            padding=self.padding.value)

    def config(self) -> UNetConfig:
        """The network ``shiftseg train`` would build with these options (one owner)."""
        return network_config(self.ndim.value, levels=self.levels.value, factor=self.factor.value,
                              padding=self.padding.value, upsampling=self.upsampling.value,
                              base_channels=self.channels.value, embedding=self.embedding.value,
                              position_scale=self.position_scale.value)

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
        return None if self.auto_window.value else self.window.value

    def segment_model(self):
        """The model chosen in the Segment widget (opened if needed), loaded; ShiftSegError if none."""
        from ..modelio import load_model

        _, segment = self._viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        if segment.model.path is None:
            raise ShiftSegError("choose a model in the Segment widget first")
        return load_model(segment.model.path)

    def bundled_model(self):
        """The bundled nuclei model of the chosen dimensionality, loaded."""
        from ..modelio import load_bundled

        return load_bundled(self.ndim.value)

    def start(self) -> None:
        """Start training with the current settings."""
        if self._task.busy:
            return
        try:
            config = {NEW: self.config, BUNDLED: self.bundled_model,
                      FROM_SEGMENT: self.segment_model}[self.start_from.value]()
            g = config.geometry
            channels = getattr(config, "config", config).in_channels
            window = self.training_window()
            if self.source.value == LAYERS and self.image.value is not None \
                    and self.image.value.ndim != g.ndim + (channels > 1):
                raise ShiftSegError(
                    f"the model is {g.ndim}D but the image layer is {self.image.value.ndim}D"
                    if channels == 1 else f"the model takes {channels} channels: the image layer "
                    f"must be (channels, {g.ndim} spatial axes), it is {self.image.value.ndim}D")
            validation = self.validation.value / 100
            validation_pairs = None
            inputs = ()  # the layers read: removing one stops the training
            if self.source.value == LAYERS:
                if self.image.value is None or self.labels_layer.value is None:
                    raise ShiftSegError("choose an image layer and a labels layer (or synthetic data)")
                source, labels = self.image.value.data, self.labels_layer.value.data
                annotated = self.annotated_region(np.shape(labels))
                inputs = (self.image.value, self.labels_layer.value, self.annotated.value)
            else:
                annotated = None
                kind = _pipeline.SYNTHETIC[self.source.value]
                # A generator has no objects to size the window by: the CLI's default window.
                window = window or default_training_window(g)[0]
                source, labels = _pipeline.synthetic_source(kind, g, window), None
                if validation:
                    validation_pairs = _pipeline.synthetic_validation(source)
            if window is not None:
                g.check_training_window(window, allow_small=self.allow_small.value)
            path = Path(self.save_path.value)
            if path.suffix != ".safetensors":
                raise ShiftSegError(f"model files must end in .safetensors, got {path.name}")
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        self._losses = []
        self._validating = bool(validation)
        self.held_out.value = ""
        self._task.start(_pipeline.train_model, source, labels, config, path,
                         steps=self.steps.value, lr=self.lr.value, batch_size=self.batch_size.value,
                         lr_schedule=TRAINING_DEFAULTS["lr_schedule"],
                         output_window=window, allow_small_window=self.allow_small.value,
                         augment=self.augment.value, validation=validation,
                         tune=self.tune.value and bool(validation),
                         validation_pairs=validation_pairs, annotated=annotated,
                         input_layers=inputs)

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
        self.axes.clear()
        if self._losses:
            steps, losses = zip(*self._losses)
            self.axes.plot(steps, losses, lw=1)
        self.axes.set_xlabel("step", fontsize=7)
        self.axes.set_ylabel("loss", fontsize=7)
        self.axes.tick_params(labelsize=6)
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
        """The network and batch defaults of ``shiftseg train`` for the new dimensionality."""
        ndim = self.ndim.value
        self.levels.value = network_defaults(ndim)["levels"]
        self.batch_size.value = training_defaults(ndim, self._continued)["batch_size"]
        self._update_geometry()

    @property
    def _continued(self) -> bool:
        return self.start_from.value != NEW

    def _start_from_changed(self, *_) -> None:
        """A continued model keeps its own network: its controls are then off."""
        new = self.start_from.value == NEW
        for w in (self.levels, self.factor, self.upsampling, self.padding, self.channels,
                  self.embedding, self.position_scale):
            w.enabled = new
        self.ndim.enabled = self.start_from.value != FROM_SEGMENT  # it picks the bundled model
        if new != self._was_new:  # new <-> continued: that start's steps and rate
            defaults = training_defaults(self.ndim.value, not new)
            self.steps.value, self.lr.value = defaults["steps"], defaults["lr"]
        self._was_new = new

    def _window_typed(self, *_) -> None:
        self.auto_window.value = False

    def _embedding_changed(self, *_) -> None:
        self.position_scale.visible = self.embedding.value == "spatial"

    def _validation_changed(self, *_) -> None:
        self.tune.enabled = self.validation.value > 0  # tuning needs held-out annotations

    def _update_geometry(self, *_) -> None:
        window = self.training_window()
        try:
            g = self.geometry()
            text = (f"f^l={g.grid}  capacity={g.capacity}  context={g.context}; valid inputs ≡ "
                    f"{g.input_residue} (mod {g.grid}) ≥ {g.min_input_size}; ")
            text += ("window sized to the objects (about 3 diameters; synthetic data: "
                     f"{default_training_window(g)[0]})" if window is None else
                     f"window {window} → input {g.training_input_size(window)}")
        except ShiftSegError as err:
            self.geometry_info.value, self.warning.value = "", str(err)
            self.train_button.enabled = False
            return
        self.geometry_info.value = text
        small = g.valid and window is not None and window <= g.grid
        self.warning.value = (
            f"⚠ window {window} ≤ f^l = {g.grid}: the loss only relates pixels inside one window, "
            f"so the network's f^l phases are never trained as neighbours across the window edge; "
            f"at inference those neighbours meet and seams appear on the f^l grid. "
            f"Use a window > {g.grid}." if small else "")
        self.train_button.enabled = self._task.busy or not small or self.allow_small.value
