"""Small helpers shared by the widgets: layer choices, plugin settings, the busy button."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGIN = "napari-shiftseg"


@dataclass(frozen=True)
class InferenceSettings:
    device: str = "auto"
    memory_budget_gb: float = 4.0
    tile_size: int = 128
    idle_gc: bool = True  # full garbage collections at idle moments (_gc.py, RESULTS.md section 6)


def inference_settings() -> InferenceSettings:
    """The plugin's ``inference`` settings (napari Preferences), or the defaults."""
    try:
        from napari.settings import get_plugin_settings

        s = get_plugin_settings(PLUGIN).inference
        return InferenceSettings(s.device, float(s.memory_budget_gb), int(s.tile_size),
                                 bool(getattr(s, "idle_gc", True)))
    except (ImportError, KeyError, AttributeError):  # older napari, or the plugin not discovered
        return InferenceSettings()


def layer_choices(viewer, kind: type[Any]):
    """A magicgui ``choices`` callable listing the viewer's layers of ``kind`` by name."""

    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    return choices


def watch_layers(viewer, widget) -> None:
    """Refresh ``widget``'s layer combo boxes whenever layers are added or removed."""
    # A bound method: napari holds it weakly, so a closed widget is not kept alive.
    viewer.layers.events.inserted.connect(widget.reset_choices)
    viewer.layers.events.removed.connect(widget.reset_choices)


def devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_choice(settings: InferenceSettings):
    """The device combo box, preset to the plugin setting when this machine has that device."""
    from magicgui.widgets import ComboBox

    choices = devices()
    return ComboBox(label="device", choices=choices,
                    value=settings.device if settings.device in choices else "auto")


def set_running(button, running: bool, idle_text: str, others=()) -> None:
    """Turn ``button`` into a Cancel button while a job runs, and disable ``others``."""
    button.text = "Cancel" if running else idle_text
    for widget in others:
        widget.enabled = not running


def wrap(*labels) -> None:
    """Let long info lines wrap instead of widening the dock (and shrinking the canvas)."""
    for label in labels:
        label.native.setWordWrap(True)


class ModelCache:
    """Keeps the last loaded model, keyed by path, file time and device (worker-thread use)."""

    def __init__(self):
        self._key: tuple | None = None
        self._model = None
        self._lock = threading.Lock()

    def get(self, path, device: str = "auto"):
        from ..network.devices import resolve_device
        from ..network.modelio import load_model

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
    from ..util._errors import ShiftSegError

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


def file_stamp(path: Path) -> tuple:
    """What changes when a model file is written again (saves replace the file: a new inode,
    even within the file system's coarse clock tick)."""
    if not path.is_file():
        return (None,)
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ScrollsWhenDocked:
    """Mixin for a ``Container(scrollable=True)`` widget: napari docks a magicgui widget's
    ``native``, which for a scrollable container is the inner widget (the scroll area is left
    out). Handing napari the scroll area instead lets a tall widget scroll rather than force its
    height on the window (Segment and Train docked together fit a 1200 px screen)."""

    root_native_widget: Any  # the Container's (the scroll area when scrollable)

    @property
    def native(self):
        return self.root_native_widget

    @property
    def inner(self):
        """The widget holding the layout (inside the scroll area)."""
        from magicgui.widgets import Container

        # The property's getter, read on the class: mypy types ``Container.native`` as the getter.
        return Container.native.fget(self)  # type: ignore[attr-defined]
