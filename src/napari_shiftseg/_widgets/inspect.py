"""Inspect widget: see why exact tiling works and what breaks it.

- **f^l grid** and **phase map** show the model's geometry on the image (lazy, no network):
  the phase of a voxel (its position modulo f^l) picks which of the f^(d·l) functions u_i
  computes it (THEORY.md, result 1).
- **Tiles + seams** runs the network with the chosen tiling mode and shows the tile borders and
  the embedding jump across them: about zero for ``exact``, clearly not for ``naive``.
- **Stitch check** compares stitched with whole-image output and prints the max abs diff.

A Segment run leaves hidden phase, grid and seam layers of the same names; the buttons update
those in place and show and select them, so that a click always shows its map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from ..inference.session import MODES
from ..network.tiling import tile_for
from ..util._errors import ShiftSegError
from . import _inspect_jobs, _layers
from ._common import ModelCache, check_image, device_choice, inference_settings, layer_choices, watch_layers, wrap
from ._model_choice import ModelChooser
from ._worker import Task

if TYPE_CHECKING:
    import napari


class InspectWidget(Container):
    """Dock widget: grid, phase map, seams and the stitched-vs-whole check."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        settings = inference_settings()
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.model = ModelChooser()
        self.tile = SpinBox(label="output tile", value=settings.tile_size, min=1, max=4096)
        self.mode = ComboBox(label="stitching", choices=list(MODES), value="exact")
        self.device = device_choice(settings)
        self.grid_button = PushButton(text="f^l grid")
        self.phase_button = PushButton(text="Phase map")
        self.seams_button = PushButton(text="Tiles + seams")
        self.check_button = PushButton(text="Stitch check")
        row1 = Container(widgets=[self.grid_button, self.phase_button], layout="horizontal", labels=False)
        row2 = Container(widgets=[self.seams_button, self.check_button], layout="horizontal", labels=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.result = Label(label="result", value="")
        super().__init__(widgets=[self.image, self.model, self.tile, self.mode, self.device, row1,
                                  row2, self.progress, self.result])
        wrap(self.result)
        self._target = None
        self._task = Task(self.native, viewer=self._viewer, progress=self._on_progress, busy=self._on_busy,
                          failed=lambda msg: show_error(f"shiftseg: {msg}"),
                          cancelled=lambda: show_info("shiftseg: cancelled"), done=self._on_done)
        self.grid_button.changed.connect(lambda: self.show_geometry("grid"))
        self.phase_button.changed.connect(lambda: self.show_geometry("phase"))
        self.seams_button.changed.connect(self.show_seams)
        self.check_button.changed.connect(self.stitch_check)
        # A 3D image gets the 3D model, as in Segment and Sweep.
        self.image.changed.connect(self.model.follow_layer)
        watch_layers(napari_viewer, self)
        self.model.follow_layer(self.image.value)

    @property
    def busy(self) -> bool:
        return self._task.busy

    def set_model_file(self, path) -> bool:
        """Select a .safetensors model file; shows an error and keeps the old one if bad."""
        return self.model.select_file(path)

    def _checked(self):
        """(layer, geometry, placement) or None after showing why not."""
        layer = self.image.value
        try:
            if layer is None:
                raise ShiftSegError("add or select an image layer first")
            geometry = self.model.metadata().config.geometry
            check_image(layer, geometry.ndim)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return None
        return layer, geometry, _layers.placement(layer.scale, layer.translate)

    def _tile(self, geometry) -> int:
        return tile_for(geometry, self.tile.value, self.mode.value)

    def show_geometry(self, kind: str) -> None:
        """Add the f^l grid or the phase map (lazy; computed per displayed slice)."""
        from ..inference import diagnostics

        checked = self._checked()
        if checked is None:
            return
        layer, g, where = checked
        if kind == "grid":
            data, limits = diagnostics.grid_lines(layer.data.shape, g), (0, 1)
        else:
            data, limits = diagnostics.phase_map(layer.data.shape, g), (0, g.capacity - 1)
        self._show([_layers.result_layer(data, kind, layer.name, where, contrast_limits=limits)])

    def show_seams(self) -> None:
        """Tile borders and embedding jumps across them, for the chosen mode (worker thread)."""
        checked = self._checked()
        if checked is None or self._task.busy:
            return
        layer, g, where = checked
        self._target = ("seams", layer.name, where)
        self._task.start(_inspect_jobs.seams, layer.data, self.model.path, self._tile(g), self.mode.value,
                         self.device.value, ModelCache(), input_layers=(layer,))

    def stitch_check(self) -> None:
        """Print max |stitched − whole| for the chosen tile and mode (worker thread)."""
        checked = self._checked()
        if checked is None or self._task.busy:
            return
        layer, g, _ = checked
        self._target = ("check", self.mode.value, self._tile(g))
        self._task.start(_inspect_jobs.stitch_check, layer.data, self.model.path, self._tile(g),
                         self.mode.value, self.device.value, ModelCache(),
                         input_layers=(layer,))

    def _show(self, layer_tuples: list[tuple]) -> None:
        """Add or update the layers, visible, the last one selected (its controls shown)."""
        shown = _layers.show_layers(self._viewer, [(d, {**kw, "visible": True}, t)
                                                   for d, kw, t in layer_tuples])
        self._viewer.layers.selection.active = shown[-1]

    def _on_busy(self, busy: bool) -> None:
        for button in (self.seams_button, self.check_button):
            button.enabled = not busy

    def _on_progress(self, done: int, total: int, _what) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done

    def _on_done(self, result) -> None:
        self.progress.value = self.progress.max
        if self._target[0] == "seams":
            _, name, where = self._target
            self._show(_layers.diagnostic_layers(result, name, where))
            self.result.value = f"max seam jump: {float(result['seams'].max()):.3g}"
        else:
            _, mode, tile = self._target
            difference, note = result
            self.result.value = f"max |stitched − whole| = {difference:.3g} ({mode}, tile {tile}; {note})"
            show_info(f"shiftseg: {self.result.value}")
