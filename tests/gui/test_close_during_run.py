"""Issue 25: closing the widget, removing its input layer or closing the viewer while Segment,
Preview, Train or Sweep runs cancels the job, and nothing it still sends raises.

Each job is gated: it sends one progress report, then blocks until it is cancelled (no timer,
no sleep), so the close really happens mid-run, with that report still queued for the GUI
thread; after the cancel it sends a late report and goes on with the real job, which sees the
cancel and ends. Every close must cancel at once (asserted before the event loop runs again);
the test then waits for the worker to end and checks how it ended.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_shiftseg._widgets import _train_jobs
from napari_shiftseg._widgets import segment as segment_module
from napari_shiftseg._widgets import sweep as sweep_module
from napari_shiftseg._widgets.sweep import SweepWidget
from napari_shiftseg._widgets.train import LAYERS, NEW

PLUGIN = "napari-shiftseg"
CLOSES = ("undock", "delete", "remove layer", "close viewer")


class Gate:
    """A job wrapper: report, block until cancelled, report late, then run the real job."""

    def __init__(self, job, info):
        self.job, self.info = job, info
        self.entered = threading.Event()
        self.cancel: threading.Event | None = None

    def __call__(self, report, cancel, *args, **kwargs):
        self.cancel = cancel
        report(0, 2, self.info)       # queued for the GUI thread; delivered after the close
        self.entered.set()
        cancel.wait()                 # only a cancel lets the job go on
        report(2, 2, self.info)       # a late report: the widget or the viewer may be gone
        return self.job(report, cancel, *args, **kwargs)

    def release(self) -> None:
        """Teardown's safety net: never leave a worker blocked, whatever the test did."""
        if self.cancel is not None:
            self.cancel.set()


@pytest.fixture
def gate(monkeypatch):
    """``gate(module, name, info)``: gate the job function ``module.name``."""
    made = []

    def make(module, name, info):
        made.append(Gate(getattr(module, name), info))
        monkeypatch.setattr(module, name, made[-1])
        return made[-1]

    yield make
    for g in made:
        g.release()


# ---- the four runs: each returns (widget, its input layer) with a gated job started ----

def _segment_widget(viewer, model, wait_for):
    image = viewer.add_image(np.random.default_rng(0).random((64, 64), np.float32), name="img")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    # The warm-up thread is not a Task: let it end so it does not run beside the job.
    wait_for(lambda: not widget.warming_up, what="the warm-up")
    assert widget.set_model_file(model)
    widget.image.value, widget.device.value, widget.tile.value = image, "cpu", 16
    return widget, image


def start_segment(viewer, gate, wait_for, tiny_model_2d, lattice_crop):
    g = gate(segment_module, "_segment_job", "tiles")
    widget, image = _segment_widget(viewer, tiny_model_2d, wait_for)
    widget.run_button.clicked.emit()
    return widget, image, g


def start_preview(viewer, gate, wait_for, tiny_model_2d, lattice_crop):
    g = gate(segment_module, "_segment_job", "tiles")
    widget, image = _segment_widget(viewer, tiny_model_2d, wait_for)
    widget.preview_button.clicked.emit()
    return widget, image, g


def start_train(viewer, gate, wait_for, tiny_model_2d, lattice_crop, tmp_path):
    g = gate(_train_jobs, "train_model", {"loss": 1.0})
    image = viewer.add_image(lattice_crop[0], name="img")
    viewer.add_labels(lattice_crop[1], name="gt")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.source.value, widget.start_from.value = LAYERS, NEW
    widget.levels.value, widget.channels.value, widget.window.value = 2, 2, 12
    widget.steps.value = 4
    widget.save_path.value = tmp_path / "trained.safetensors"
    widget.train_button.clicked.emit()
    return widget, image, g


def start_sweep(viewer, gate, wait_for, tiny_model_2d, lattice_crop):
    g = gate(sweep_module, "sweep_job", "tile 16")
    image = viewer.add_image(lattice_crop[0], name="img")
    truth = viewer.add_labels(lattice_crop[1], name="gt")
    widget = SweepWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sweep")
    assert widget.set_model_file(tiny_model_2d)
    widget.image.value, widget.truth.value, widget.device.value = image, truth, "cpu"
    widget.tiles.value = "16:24:4"
    widget.run_button.clicked.emit()
    return widget, image, g


RUNS = {"segment": start_segment, "preview": start_preview, "train": start_train,
        "sweep": start_sweep}


def _start(run, viewer, gate, wait_for, tiny_model_2d, lattice_crop, tmp_path):
    extra = (tmp_path,) if run == "train" else ()
    widget, image, g = RUNS[run](viewer, gate, wait_for, tiny_model_2d, lattice_crop, *extra)
    assert widget.busy, f"the {run} job did not start"
    # Blocks the GUI thread without running its event loop: the job's first report stays
    # queued, to arrive after the close.
    assert g.entered.wait(wait_for.stall_s), "the job never reached the gate"
    return widget, image, g


def _close(how, viewer, widget, image, wait_for) -> None:
    if how == "undock":          # napari's close button on the dock
        viewer.window.remove_dock_widget(widget.native)
    elif how == "delete":        # the widget's Qt objects deleted while docked
        destroyed = []
        widget.native.destroyed.connect(lambda *_: destroyed.append(True))
        widget.native.deleteLater()
        wait_for(lambda: destroyed, what="the widget's deletion")
    elif how == "remove layer":
        viewer.layers.remove(image)
    else:
        viewer.close()


def _status(widget) -> str:
    return (widget.result if isinstance(widget, SweepWidget) else widget.status).value


@pytest.mark.parametrize("how", CLOSES)
@pytest.mark.parametrize("run", list(RUNS))
def test_close_during_run_cancels_the_job(run, how, viewer, gate, wait_for, qtbot, tiny_model_2d,
                                          lattice_crop, tmp_path):
    widget, image, g = _start(run, viewer, gate, wait_for, tiny_model_2d, lattice_crop, tmp_path)
    task = widget._task
    with qtbot.captureExceptions() as exceptions:
        _close(how, viewer, widget, image, wait_for)
        assert g.cancel.is_set(), f"{how} did not cancel the {run} job"
        wait_for(lambda: not task.busy, what=f"the cancelled {run} job to end")
    assert not exceptions, exceptions
    assert task.last_outcome == "cancelled"
    gone = how in ("delete", "close viewer")
    assert task.closed == gone
    if not gone:  # the widget lives on and says so, ready for the next run
        assert _status(widget) == "cancelled" and not widget.busy
    if run == "train":
        assert not (tmp_path / "trained.safetensors").exists()


def test_closing_the_viewer_stops_training_on_synthetic_data(viewer, gate, wait_for, qtbot,
                                                             tmp_path):
    """No input layer to remove: the widget's destruction alone cancels the job."""
    g = gate(_train_jobs, "train_model", {"loss": 1.0})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.source.value = "synthetic: lattice spacing 15"
    widget.levels.value, widget.channels.value, widget.window.value = 2, 2, 12
    widget.steps.value = 4
    widget.save_path.value = tmp_path / "trained.safetensors"
    widget.train_button.clicked.emit()
    assert widget.busy and g.entered.wait(wait_for.stall_s)
    task = widget._task
    with qtbot.captureExceptions() as exceptions:
        viewer.layers.clear()          # unrelated layers going changes nothing
        assert not g.cancel.is_set()
        viewer.close()
        assert g.cancel.is_set() and task.closed
        wait_for(lambda: not task.busy, what="the cancelled training to end")
    assert not exceptions, exceptions
    assert task.last_outcome == "cancelled"
    assert not (tmp_path / "trained.safetensors").exists()


@pytest.mark.parametrize("docked", [True, False], ids=["docked", "not docked"])
def test_closing_the_viewer_while_result_layers_are_added(docked, viewer, wait_for, qtbot,
                                                          tiny_model_2d, lattice_crop,
                                                          monkeypatch):
    """A run has finished and its layers are being added, one per event-loop turn, when the
    viewer closes: the rest are dropped (napari raised IndexError on layers added then)."""
    viewer.add_image(lattice_crop[0], name="img")
    widget = segment_module.SegmentWidget(viewer)
    if docked:
        viewer.window.add_dock_widget(widget, name="Segment")
    wait_for(lambda: not widget.warming_up, what="the warm-up")
    assert widget.set_model_file(tiny_model_2d)
    widget.device.value, widget.tile.value = "cpu", 16
    shown = []
    show_layers = segment_module._layers.show_layers

    def show_then_close(target, layers):
        show_layers(target, layers)
        shown.append(layers)
        if len(shown) == 1:
            viewer.close()             # right after the first result layer

    monkeypatch.setattr(segment_module._layers, "show_layers", show_then_close)
    with qtbot.captureExceptions() as exceptions:
        widget.run_button.clicked.emit()
        wait_for(lambda: shown and not widget.busy, what="the run and the close")
        # one more event-loop turn: a layer-adding step still queued must find nothing to do
        qtbot.wait(0)
    assert not exceptions, exceptions
    assert len(shown) == 1 and widget._task.closed == docked
    if not docked:  # the widget lives on: it says why the other layers are missing
        assert widget.status.value.startswith("stopped: the image layer was removed")
