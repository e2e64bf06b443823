"""Regenerate the widget screenshots in docs/screenshots/ (not run by the test suite).

Each screenshot shows one widget in use in a real napari window:

- ``train.png``: the Train widget after a short run on synthetic spacing-15 disks (loss plot);
- ``segment.png``: the Segment widget on the spacing-15 sample (embeddings as RGB, instances);
- ``inspect.png``: the Inspect widget with the phase map and a stitch check of naive tiling.

The bundled 2D model is used when it exists; otherwise the model trained for ``train.png``.
Without ``$DISPLAY`` a virtual X display is started (pyvirtualdisplay + Xvfb).

Run: ``python docs/make_screenshots.py [--steps 300] [--out docs/screenshots]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_API", "pyqt6")

PLUGIN = "napari-shiftseg"
SIZE = (1600, 1000)


def _wait(widget, timeout: float = 1800) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.busy and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    for _ in range(20):  # let the canvas and the dock widgets repaint
        QApplication.processEvents()
        time.sleep(0.02)


def _save(viewer, path: Path) -> None:
    from skimage.io import imsave

    _wait_paint()
    imsave(path, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    print("wrote", path)


def _wait_paint() -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.02)


def _fresh_viewer():
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SIZE)
    return viewer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps for train.png")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=SIZE, color_depth=24)
        display.start()
    try:
        from napari_shiftseg._widgets._layers import layer_name
        from napari_shiftseg.network.modelio import bundled_model_path

        with tempfile.TemporaryDirectory() as tmp:
            # ---- Train -------------------------------------------------------------------
            viewer = _fresh_viewer()
            _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
            train.source.value = "synthetic: lattice spacing 15"
            train.channels.value, train.window.value, train.steps.value = 8, 24, args.steps
            train.lr.value = 5e-4
            train.save_path.value = Path(tmp) / "screenshot_model.safetensors"
            viewer.open_sample(PLUGIN, "lattice15")
            train.start()
            _wait(train)
            trained = train.saved_path
            _save(viewer, args.out / "train.png")
            viewer.close()

            model = bundled_model_path(2)
            model = model if model.is_file() else trained

            # ---- Segment -----------------------------------------------------------------
            viewer = _fresh_viewer()
            viewer.open_sample(PLUGIN, "lattice15")
            _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
            segment.set_model_file(model)
            segment.tile.value, segment.device.value = 64, "cpu"
            segment.run()
            _wait(segment)
            name = viewer.layers[0].name
            viewer.layers[layer_name(name, "embeddings")].visible = True
            viewer.layers[layer_name(name, "instances")].visible = True
            _save(viewer, args.out / "segment.png")
            viewer.close()

            # ---- Inspect -----------------------------------------------------------------
            viewer = _fresh_viewer()
            viewer.open_sample(PLUGIN, "lattice15")
            _, inspect = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect")
            inspect.set_model_file(model)
            inspect.device.value = "cpu"
            inspect.show_geometry("phase")
            inspect.show_geometry("grid")
            viewer.layers[-2].visible = False  # the phase map: its layer stays listed
            inspect.mode.value, inspect.tile.value = "naive", 60
            inspect.show_seams()
            _wait(inspect)
            inspect.stitch_check()
            _wait(inspect)
            _save(viewer, args.out / "inspect.png")
            viewer.close()
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
