"""Sweep widget: false splits and AP@0.5 against output tile size, on the current layers.

Runs :func:`napari_shiftseg.reproduce.sweep.run_sweep` on the chosen image and labels layers in a
worker thread (``_worker.Task``: napari ``thread_worker``, progress bar, the Run button turns
into Cancel), then draws the poster's plot on an embedded matplotlib canvas
(``FigureCanvasQTAgg``). Optionally writes ``sweep.csv`` and ``sweep.png`` to a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from ..util._errors import ShiftSegError
from ._common import device_choice, inference_settings, layer_choices, watch_layers
from ._model_choice import ModelChooser
from ._worker import Task

if TYPE_CHECKING:
    import napari


def sweep_job(report, cancel, image, labels, model_path, tiles, mode, device):
    """Worker-thread job: load the model and run the sweep (no Qt here)."""
    from ..network.modelio import load_model
    from ..reproduce.sweep import run_sweep

    model = load_model(model_path)
    return run_sweep(np.asarray(image), np.asarray(labels), model, tiles, mode=mode,
                     device=device, progress=lambda done, total, _msg: report(done, total, _msg),
                     cancel=cancel)


class SweepWidget(Container):
    """Dock widget: tile-size sweep of the chosen image + labels layers, with the plot."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self._viewer = napari_viewer
        settings = inference_settings()
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.truth = ComboBox(label="ground truth", choices=layer_choices(napari_viewer, Labels))
        self.model = ModelChooser()
        self.tiles = LineEdit(label="tile sizes", value="112:148:4")
        self.tiles.tooltip = "output tile sizes: A:B (inclusive), A:B:STEP or A,B,C"
        self.mode = ComboBox(label="stitching", choices=["naive", "exact"], value="naive")
        self.device = device_choice(settings)
        self.folder = FileEdit(label="save to (optional)", mode="d", value="")
        self.run_button = PushButton(text="Run sweep")
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.result = Label(label="result", value="")
        super().__init__(widgets=[self.image, self.truth, self.model, self.tiles, self.mode,
                                  self.device, self.folder, self.run_button, self.progress,
                                  self.result])
        self.figure = Figure(figsize=(4.5, 3.0), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.native.layout().addWidget(self.canvas)
        self.last_result: dict | None = None
        self._task = Task(self.native, viewer=napari_viewer, progress=self._on_progress,
                          busy=self._on_busy, failed=self._on_failed,
                          cancelled=self._on_cancelled, done=self._on_done)
        self.run_button.changed.connect(self._run_or_cancel)
        self.image.changed.connect(self.model.follow_layer)
        watch_layers(napari_viewer, self)

    @property
    def busy(self) -> bool:
        return self._task.busy

    def set_model_file(self, path) -> bool:
        """Select a .safetensors model file; shows an error and keeps the old one if bad."""
        return self.model.select_file(path)

    # ---- actions -------------------------------------------------------------------------
    def _run_or_cancel(self) -> None:
        if self._task.busy:
            self._task.cancel()
            self.result.value = "cancelling…"
            return
        self.run()

    def run(self) -> None:
        """Start the sweep in a worker thread (shows a one-line error instead if inputs are bad)."""
        from ..reproduce.sweep import parse_tiles

        image, labels = self.image.value, self.truth.value
        try:
            if image is None or labels is None:
                raise ShiftSegError("choose an image layer and a labels (ground truth) layer")
            if tuple(image.data.shape) != tuple(labels.data.shape):
                raise ShiftSegError(f"image {tuple(image.data.shape)} and labels "
                                    f"{tuple(labels.data.shape)} must have the same shape")
            geometry = self.model.metadata().config.geometry
            if image.data.ndim != geometry.ndim:
                raise ShiftSegError(f"the model is {geometry.ndim}D but {image.name} is "
                                    f"{image.data.ndim}D")
            tiles = parse_tiles(self.tiles.value)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            self.result.value = str(err)
            return
        self.result.value = f"{len(tiles)} tile sizes…"
        self._task.start(sweep_job, image.data, labels.data, self.model.path, tiles,
                         self.mode.value, self.device.value, input_layers=(image, labels))

    # ---- task callbacks (GUI thread) -----------------------------------------------------
    def _on_busy(self, busy: bool) -> None:
        self.run_button.text = "Cancel" if busy else "Run sweep"
        for widget in (self.image, self.truth, self.tiles, self.mode, self.device):
            widget.enabled = not busy

    def _on_progress(self, done: int, total: int, message) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done
        if message:
            self.result.value = str(message)

    def _on_failed(self, message: str) -> None:
        self.result.value = message
        show_error(f"shiftseg: {message}")

    def _on_cancelled(self) -> None:
        self.result.value = "cancelled"
        show_info("shiftseg: sweep cancelled")

    def _on_done(self, result: dict) -> None:
        from ..reproduce.figures import sweep_axes

        self.last_result = result
        self.figure.clear()
        ax = self.figure.add_subplot(1, 1, 1)
        sweep_axes(ax, result["rows"], result["grid"], title=f"{result['mode']} tiling")
        self.canvas.draw_idle()
        rows = result["rows"]
        best = min(rows, key=lambda r: (r["false_splits"], -r["ap50"]))
        self.result.value = (f"best tile {best['tile']}: {best['false_splits']} false splits, "
                             f"AP50 {best['ap50']:.2f}; max |stitched − whole| "
                             f"{max(r['max_abs_diff'] for r in rows):.2g}")
        folder = self.folder.value
        if folder and str(folder) not in ("", "."):
            self.save(folder)

    def save(self, folder) -> tuple[Path, Path]:
        """Write ``sweep.csv`` and ``sweep.png`` of the last result into ``folder``."""
        from ..reproduce.figures import sweep_figure
        from ..reproduce.sweep import write_csv

        if self.last_result is None:
            raise ShiftSegError("run a sweep first")
        folder = Path(folder)
        csv = write_csv(self.last_result["rows"], folder / "sweep.csv")
        png = sweep_figure(self.last_result["rows"], self.last_result["grid"], folder / "sweep.png")
        show_info(f"shiftseg: wrote {csv} and {png}")
        return csv, png
