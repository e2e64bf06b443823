"""One background job at a time, in a napari thread worker, with progress and cancel.

The job function runs in a worker thread as ``function(report, cancel, *args, **kwargs)``:

- ``report(done, total, info=None)`` may be called from that thread as often as it likes; it
  is throttled and relayed to the GUI thread through a Qt signal (queued connection), so the
  widgets never touch Qt objects from the worker.
- ``cancel`` is a :class:`threading.Event`; the core functions poll it and raise
  ``napari_shiftseg.util.progress.Cancelled`` (or return early).

Every exception is caught *inside* the worker and turned into one of three outcomes, emitted on
the GUI thread once the worker has finished: :attr:`Task.done` (the result),
:attr:`Task.failed` (a one-line user-facing message) or :attr:`Task.cancelled`. The task is
idle again before any of them is emitted, so a handler can start the next job right away.

A job outlives nothing it was started for (issue 25): closing the owning widget, taking it out
of its dock (napari's close button) or removing one of the job's input layers cancels it, as
the Cancel button does; when the owner's Qt objects are destroyed (the viewer closing, or the
widget deleted) the task *closes*: the job is cancelled and its worker quit, and whatever it
still sends (progress, the result) is dropped instead of reaching deleted widgets. The task
itself has no Qt parent for that reason: it stays alive, with the worker, until the worker ends.
"""

from __future__ import annotations

import logging
import threading
import time

from napari.qt.threading import FunctionWorker, create_worker
from qtpy.QtCore import QEvent, QObject, Signal, Slot

from ..util._errors import ShiftSegError, failure_message

log = logging.getLogger(__name__)

#: Minimum seconds between two relayed progress reports (the last one always goes through).
REPORT_INTERVAL = 0.05


def _is_cancellation(err: BaseException) -> bool:
    # progress.Cancelled lives in the core; compare by name so this module does not import it
    # eagerly (and keeps working with any core function that raises its own Cancelled).
    return type(err).__name__ == "Cancelled"


def _guarded(function, report, cancel, args, kwargs):
    """Run ``function`` and return ``(kind, payload)`` instead of raising."""
    try:
        result = function(report, cancel, *args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - every failure must reach the GUI as a message
        if _is_cancellation(err) or cancel.is_set():
            return "cancelled", None
        if isinstance(err, ShiftSegError):
            return "failed", str(err)
        message = failure_message(err)  # permission, disk full, memory, corrupt data: one line
        if message is not None:
            return "failed", message
        log.exception("shiftseg background job failed")
        return "failed", f"{type(err).__name__}: {err}"
    if cancel.is_set():
        return "cancelled", None
    return "done", result


class _CancellableWorker(FunctionWorker):
    """A FunctionWorker whose ``quit()`` (called by napari for every worker when the app quits)
    also sets the job's cancel event, so closing napari never waits for a long job."""

    cancel_event: threading.Event | None = None

    def quit(self) -> None:
        super().quit()
        if self.cancel_event is not None:
            self.cancel_event.set()


class Task(QObject):
    """Runs one job function at a time in a napari ``thread_worker``.

    ``owner`` (the widget's ``native``) and ``viewer`` are watched so that no job outlives
    them (see the module doc); the job's ``input_layers`` (given to :meth:`start`) are the
    layers whose removal cancels it.
    """

    #: ``(done, total, info)`` from the job's ``report`` calls (throttled).
    progress = Signal(int, int, object)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    #: True when a job starts, False when it has finished (whatever the outcome).
    busy_changed = Signal(bool)
    # The job's reports, from the worker thread to _relay on the GUI thread (queued): a report
    # still queued when the owner goes then lands here, where it is dropped, not in a widget.
    _reported = Signal(int, int, object)

    def __init__(self, owner=None, *, viewer=None, progress=None, busy=None, failed=None,
                 cancelled=None, done=None):
        """Optional keyword handlers are connected to the signals of the same name."""
        super().__init__()  # no parent: it must outlive the owner's Qt objects (module doc)
        for signal, handler in ((self.progress, progress), (self.busy_changed, busy),
                                (self.failed, failed), (self.cancelled, cancelled), (self.done, done)):
            if handler is not None:
                signal.connect(handler)
        self._reported.connect(self._relay)
        self._cancel = threading.Event()
        self._worker = None
        self._outcome = None
        self._last_report = 0.0
        self._inputs: tuple = ()
        self._closed = False
        #: How the last job ended: "done", "failed" or "cancelled" (None before the first).
        self.last_outcome: str | None = None
        if owner is not None:
            owner.installEventFilter(self)   # close / undock: see eventFilter
            owner.destroyed.connect(self.close)
        # napari holds the bound method weakly: a task that goes is not kept alive.
        self._removed = viewer.layers.events.removed if viewer is not None else None
        if self._removed is not None:
            self._removed.connect(self._layer_removed)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def closed(self) -> bool:
        """The owner is gone: no job starts and nothing is emitted any more."""
        return self._closed

    def start(self, function, *args, input_layers=(), **kwargs) -> None:
        """Start ``function(report, cancel, *args, **kwargs)`` in a worker thread; removing
        one of ``input_layers`` from the viewer cancels it."""
        if self.busy:
            raise RuntimeError("a shiftseg job is already running")
        if self._closed:
            return  # the widget is gone: nobody would see the result
        self._cancel = threading.Event()
        self._outcome = None
        self._last_report = 0.0
        self._inputs = tuple(input_layers)
        worker = create_worker(_guarded, function, self._report, self._cancel, args, kwargs,
                               _worker_class=_CancellableWorker, _start_thread=False)
        worker.cancel_event = self._cancel
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.busy_changed.emit(True)
        worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (no effect when idle)."""
        self._cancel.set()

    def close(self, *_) -> None:
        """The owner is gone for good (its Qt objects are, or are about to be, deleted): cancel
        and quit the job, and disconnect every handler so that nothing it still sends reaches
        the owner's widgets. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._cancel.set()
        if self._worker is not None:
            self._worker.quit()
        for signal in (self.progress, self.done, self.failed, self.cancelled, self.busy_changed):
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):  # nothing connected
                pass
        if self._removed is not None:
            self._removed.disconnect(self._layer_removed)
            self._removed = None

    # ---- the owner and the viewer (GUI thread) ------------------------------------------
    def eventFilter(self, watched, event) -> bool:
        # Closed, or taken out of its dock (napari's close button does that and the widget
        # lives on, so its handlers still run): the job stops as if Cancel had been pressed.
        kind = event.type()
        if kind == QEvent.Type.Close or (kind == QEvent.Type.ParentChange and watched.parent() is None):
            self.cancel()
        return False

    def _layer_removed(self, event) -> None:
        # Also how a closing viewer reaches a job with input layers: napari removes every
        # layer before it closes the window.
        if self.busy and any(event.value is layer for layer in self._inputs):
            self.cancel()

    # ---- called in the worker thread -------------------------------------------------
    def _report(self, done: int, total: int, info=None) -> None:
        now = time.monotonic()
        if self._closed or (done < total and now - self._last_report < REPORT_INTERVAL):
            return
        self._last_report = now
        self._reported.emit(int(done), int(total), info)

    # ---- GUI thread ------------------------------------------------------------------
    @Slot(int, int, object)
    def _relay(self, done: int, total: int, info) -> None:
        if not self._closed:
            self.progress.emit(done, total, info)

    def _on_returned(self, outcome) -> None:
        self._outcome = outcome

    def _on_finished(self) -> None:
        kind, payload = self._outcome or ("failed", "the background job stopped without a result")
        if self._cancel.is_set():
            # A cancel asked for while the result was on its way wins (no layers change after
            # Cancel), and a quit worker (app or owner closing) returns nothing.
            kind, payload = "cancelled", None
        self._worker = None
        self._outcome = None
        self._inputs = ()
        self.last_outcome = kind
        if self._closed:
            return  # the owner's widgets are gone: nothing to tell them
        self.busy_changed.emit(False)
        if kind == "done":
            self.done.emit(payload)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(payload)
