"""Full garbage collections when the viewer is idle, not in the middle of a slider drag.

With the plugin loaded (torch, the model) a napari process tracks ~550k Python objects, and
one full (generation 2) collection scans them all: 170 ms for napari alone and 280 ms with
the plugin, measured here. Python starts one whenever enough objects have survived, and on the
2 GB lazy sample that was once every ~20 z-slider moves: the only event-loop stall above
100 ms left (RESULTS.md section 6). ``gc.freeze()`` removed it but kept every layer that
existed then alive after it was deleted (400 MB measured), so it stayed opt-in.

:class:`IdleCollector` keeps Python's cheap young-generation collections and moves the full
ones to moments nobody is waiting on: after 2 s without slider, camera, cursor or layer
activity and with no run going, right after a layer is removed (so its memory comes back at once), and at the latest
every minute. Cyclic garbage therefore lives seconds longer than before, never more than a
minute; nothing is frozen. The previous thresholds come back with :meth:`IdleCollector.stop`.
"""

from __future__ import annotations

import gc
import time
import weakref

from qtpy.QtCore import QTimer

__all__ = ["IdleCollector", "install", "release"]

#: Seconds without activity before a deferred full collection runs.
IDLE_S = 2.0
#: A full collection runs at least this often (seconds) while anything was allocated.
MAX_INTERVAL_S = 60.0
#: Python's own rule: a full collection is considered after 10 middle-generation collections.
DUE_AFTER = 10
#: A threshold no running process reaches: Python never starts a full collection itself.
NEVER = 1 << 30


class IdleCollector:
    """Defers full garbage collections of this process to idle moments of ``viewer``."""

    def __init__(self, viewer, idle_s: float = IDLE_S, max_interval_s: float = MAX_INTERVAL_S):
        self.idle_s, self.max_interval_s = idle_s, max_interval_s
        self.collections = 0  # full collections this collector ran (the tests read it)
        self._widgets: list = []  # weak references to widgets whose jobs count as activity
        self._pending = False  # a collection after a layer removal is queued
        now = time.monotonic()
        self._active_at = self._collected_at = now
        self._middle = self._middle_collections()
        # napari >= 0.7 keeps the camera in viewer.scene (viewer.camera is deprecated there)
        scene = getattr(viewer, "scene", None)
        camera = scene.camera if scene is not None else viewer.camera
        events = [viewer.dims.events.current_step, camera.events.zoom, camera.events.center,
                  camera.events.angles, viewer.cursor.events.position, viewer.layers.events.inserted]
        self._connected = [(e, self._touch) for e in events]
        self._connected.append((viewer.layers.events.removed, self._removed))
        for event, callback in self._connected:
            event.connect(callback)
        self._timer = QTimer()
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        # Last, so that a failure above leaves Python's thresholds alone.
        self._previous = gc.get_threshold()
        gc.set_threshold(self._previous[0], self._previous[1], NEVER)

    @staticmethod
    def _middle_collections() -> int:
        return int(gc.get_stats()[1]["collections"])

    def _touch(self, _event=None) -> None:
        self._active_at = time.monotonic()

    def _removed(self, _event=None) -> None:
        # A removed layer's data is often held by reference cycles: give it back now, once the
        # removal has finished (not inside napari's event). One collection for a burst: closing
        # a viewer removes every layer, and one full collection per layer cost ~1 s each.
        self._touch()
        if not self._pending:
            self._pending = True
            QTimer.singleShot(0, self._collect_pending)

    def _collect_pending(self) -> None:
        self._pending = False
        self.collect()

    def due(self) -> bool:
        """Whether Python would have run a full collection by now."""
        return self._middle_collections() - self._middle >= DUE_AFTER

    def watch(self, widget) -> None:
        """While ``widget.busy`` (a run, a training), the viewer is not idle: a full collection
        in the middle of a run stalled it for 0.3 s."""
        self._widgets = [w for w in self._widgets if w() is not None] + [weakref.ref(widget)]

    def _tick(self) -> None:
        if any(getattr(w(), "busy", False) for w in self._widgets):
            self._touch()
        now = time.monotonic()
        idle = now - self._active_at >= self.idle_s
        overdue = now - self._collected_at >= self.max_interval_s
        if self.due() and (idle or overdue):
            self.collect()

    def collect(self) -> None:
        """One full collection now."""
        gc.collect()
        self.collections += 1
        self._collected_at = time.monotonic()
        self._middle = self._middle_collections()

    def stop(self) -> None:
        """Python's own thresholds back; no more deferred collections."""
        self._timer.stop()
        for event, callback in self._connected:
            try:
                event.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):  # the viewer is gone
                pass
        gc.set_threshold(*self._previous)


_state: dict = {"collector": None, "users": 0}


def install(viewer, widget=None) -> IdleCollector:
    """Start deferring full collections (or join the running collector: one per process, on
    the first viewer's events); ``widget``'s jobs count as activity. Each call is matched by one
    :func:`release`."""
    if _state["collector"] is None:
        _state["collector"] = IdleCollector(viewer)
    _state["users"] += 1
    if widget is not None:
        _state["collector"].watch(widget)
    return _state["collector"]


def release() -> None:
    """One user fewer; the last one stops the collector (Python's thresholds back)."""
    _state["users"] = max(0, _state["users"] - 1)
    if not _state["users"] and _state["collector"] is not None:
        _state["collector"].stop()
        _state["collector"] = None
