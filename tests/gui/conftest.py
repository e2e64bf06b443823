"""Fixtures for the GUI tests: a real napari viewer under Xvfb (pytest-xvfb) and tiny models.

Everything is small on purpose (2 shared CPU cores): images of 64² or less, U-Nets with two
base channels and random weights, saved with ``modelio.save_model`` in a temporary folder.
"""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("QT_API", "pyqt6")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gui" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gui)


def _tiny_model(path, ndim: int, levels: int = 3):
    from helpers import save_tiny

    return save_tiny(path, ndim=ndim, levels=levels)


@pytest.fixture(scope="session")
def tiny_model_2d(tmp_path_factory):
    """A random-weight 2D model, l = 3 (f^l = 8, context 88), two base channels."""
    return _tiny_model(tmp_path_factory.mktemp("models") / "tiny_2d.safetensors", 2)


@pytest.fixture(scope="session")
def tiny_model_3d(tmp_path_factory):
    """A random-weight 3D model, l = 2 (f^l = 4, context 40), two base channels."""
    return _tiny_model(tmp_path_factory.mktemp("models") / "tiny_3d.safetensors", 3, levels=2)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture(autouse=True)
def _python_gc_thresholds_back():
    """Every GUI test ends with Python's own garbage-collection thresholds, whether or not the
    Segment widgets it opened were destroyed (they defer full collections while open: _gc.py),
    so the rest of the session collects as usual."""
    import gc

    before = gc.get_threshold()
    yield
    from napari_shiftseg._widgets import _gc

    while _gc._state["collector"] is not None:
        _gc.release()
    assert gc.get_threshold() == before


@pytest.fixture
def lattice_crop():
    """64 x 64 crop of the spacing-15 sample (image, labels)."""
    from napari_shiftseg._sample_data import separable_lattice

    (image, _, _), (labels, _, _) = separable_lattice()
    return image[:64, :64].copy(), labels[:64, :64].copy()


#: A GUI wait fails only after this many seconds in which nothing moved (no progress report, no
#: status line, no layer added). It bounds a stall, not a job: a job that keeps reporting may
#: take as long as the machine's load makes it take, and nothing here asserts a wall time.
STALL_S = float(os.environ.get("SHIFTSEG_GUI_STALL_S", "600"))
#: How often (ms of event loop) a wait looks at its condition.
POLL_MS = 10


def wait_until(qtbot, condition, *, progress=lambda: None, what="the condition"):
    """Run the event loop until ``condition()`` holds; fail only when ``progress()`` (anything
    that changes while the work advances) has not changed for :data:`STALL_S` seconds."""
    seen, since = progress(), time.monotonic()
    while not condition():
        qtbot.wait(POLL_MS)
        now = progress()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            pytest.fail(f"waiting for {what}: nothing moved for {STALL_S:.0f} s (last: {seen!r})")


def visible_state(widget) -> tuple:
    """What a widget shows of its job's progress: the progress bar, the status line, the
    viewer's layers (added one by one after a Segment run)."""
    parts = [getattr(getattr(widget, name, None), "value", None)
             for name in ("progress", "status", "result")]
    viewer = getattr(widget, "_viewer", None)
    return (*parts, getattr(getattr(widget, "progress", None), "max", None),
            None if viewer is None else len(viewer.layers))


@pytest.fixture
def wait_for(qtbot):
    """``wait_for(condition, progress=..., what=...)``: :func:`wait_until` with this test's qtbot."""

    def wait(condition, *, progress=lambda: None, what="the condition"):
        wait_until(qtbot, condition, progress=progress, what=what)

    wait.stall_s = STALL_S  # for waits outside the event loop (threading.Event.wait)
    return wait


@pytest.fixture
def wait_idle(qtbot):
    """``wait_idle(widget)``: block (running the event loop) until the widget's job is over
    (and the Segment widget's warm-up, which runs beside it when the widget opens); fails only
    when the widget shows no progress for :data:`STALL_S` seconds."""

    def wait(widget):
        wait_until(qtbot, lambda: not widget.busy and not getattr(widget, "warming_up", False),
                   progress=lambda: visible_state(widget), what=f"{type(widget).__name__}'s job")

    return wait
