"""One background job at a time, in a napari thread worker, with progress and cancel.

The job function runs in a worker thread as ``function(report, cancel, *args, **kwargs)``:

- ``report(done, total, info=None)`` may be called from that thread as often as it likes; it
  is throttled and relayed to the GUI thread through a Qt signal (queued connection), so the
  widgets never touch Qt objects from the worker.
- ``cancel`` is a :class:`threading.Event`; the core functions poll it and raise
  ``napari_shiftseg.progress.Cancelled`` (or return early).

Every exception is caught *inside* the worker and turned into one of three outcomes, emitted on
the GUI thread once the worker has finished: :attr:`Task.done` (the result),
:attr:`Task.failed` (a one-line user-facing message) or :attr:`Task.cancelled`. The task is
idle again before any of them is emitted, so a handler can start the next job right away.
"""

from __future__ import annotations

import logging
import threading
import time

from napari.qt.threading import FunctionWorker, create_worker
from qtpy.QtCore import QObject, Signal

from .._errors import ShiftSegError, failure_message

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
    """Runs one job function at a time in a napari ``thread_worker``."""

    #: ``(done, total, info)`` from the job's ``report`` calls (throttled).
    progress = Signal(int, int, object)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    #: True when a job starts, False when it has finished (whatever the outcome).
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, *, progress=None, busy=None, failed=None,
                 cancelled=None, done=None):
        """Optional keyword handlers are connected to the signals of the same name."""
        super().__init__(parent)
        for signal, handler in ((self.progress, progress), (self.busy_changed, busy),
                                (self.failed, failed), (self.cancelled, cancelled), (self.done, done)):
            if handler is not None:
                signal.connect(handler)
        self._cancel = threading.Event()
        self._worker = None
        self._outcome = None
        self._last_report = 0.0

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, function, *args, **kwargs) -> None:
        """Start ``function(report, cancel, *args, **kwargs)`` in a worker thread."""
        if self.busy:
            raise RuntimeError("a shiftseg job is already running")
        self._cancel = threading.Event()
        self._outcome = None
        self._last_report = 0.0
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

    # ---- called in the worker thread -------------------------------------------------
    def _report(self, done: int, total: int, info=None) -> None:
        now = time.monotonic()
        if done < total and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        self.progress.emit(int(done), int(total), info)

    # ---- GUI thread ------------------------------------------------------------------
    def _on_returned(self, outcome) -> None:
        self._outcome = outcome

    def _on_finished(self) -> None:
        kind, payload = self._outcome or ("failed", "the background job stopped without a result")
        self._worker = None
        self._outcome = None
        self.busy_changed.emit(False)
        if kind == "done":
            self.done.emit(payload)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(payload)
