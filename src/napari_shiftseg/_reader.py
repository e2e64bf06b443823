"""npe2 reader for shiftseg model files: dropping a ``.safetensors`` model on napari (or
File > Open) loads it into the Segment widget instead of adding a layer.

A model is not image data, so the reader returns napari's documented "read, but no layers"
sentinel ``[(None,)]`` after handing the file to the widget. The widget validates the file
and shows a one-line error (and keeps its previous model) when it is not a shiftseg model.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-shiftseg"


def get_reader(path):
    """Return a reader for a single shiftseg ``.safetensors`` model file, else None."""
    if not isinstance(path, (str, Path)) or Path(path).suffix != ".safetensors":
        return None
    return _open_in_segment_widget


def _open_in_segment_widget(path):
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return [(None,)]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.set_model_file(path)
    return [(None,)]
