"""issue 9: the widgets show the CLI's one-line message for failures of the environment."""

import errno
import threading

from napari_shiftseg._widgets._worker import _guarded
from napari_shiftseg.util._errors import failure_message


def test_worker_reports_environment_failures_in_one_line():
    for err in (OSError(errno.ENOSPC, "No space left on device", "/data/out.zarr/labels/c/0/0"),
                PermissionError(errno.EACCES, "Permission denied", "/data/out.zarr"),
                MemoryError()):
        def job(report, cancel, err=err):
            raise err

        kind, message = _guarded(job, None, threading.Event(), (), {})
        assert kind == "failed" and message == failure_message(err) and "\n" not in message
