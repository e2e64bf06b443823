"""User-facing errors.

Everything a user can get wrong (a bad shape, a corrupt model file, a tile that is too small)
raises :class:`ShiftSegError` with one sentence that names the bad value and what is allowed.
The CLI prints such errors as a single line and exits non-zero; the widgets show them in the
status bar. Programming errors stay ordinary exceptions with tracebacks.

Failures of the *environment* (no permission, a full disk, not enough memory, an input file that
cannot be decoded) are not programming errors either: :func:`failure_message` turns them into the
same kind of one-line message, for the CLI's error boundary and for the widgets' worker alike.
"""

from __future__ import annotations

import errno

#: Exit status of the CLI for a ShiftSegError (bad input, settings or model file).
EXIT_USER_ERROR = 2
#: Exit status for a failure of the environment (permission, disk space, memory, corrupt data).
EXIT_SYSTEM_ERROR = 3


class ShiftSegError(ValueError):
    """A problem with the user's input, model file or settings (message is user-facing)."""


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def _where(err: OSError) -> str:
    name = err.filename or ""
    return f" ({name})" if name else ""


_OS_MESSAGES: dict[int | None, str] = {
    errno.EACCES: "permission denied{where}: choose a location you can write to (or read)",
    errno.EPERM: "operation not permitted{where}: choose a location you can write to (or read)",
    errno.ENOSPC: "no space left on the device{where}: free some space (or choose another output) "
                  "and run the same command again to resume",
    errno.EDQUOT: "disk quota exceeded{where}: free some space (or choose another output) and "
                  "run the same command again to resume",
    errno.EROFS: "the file system is read-only{where}: choose another output location",
    errno.EISDIR: "a directory was found where a file was expected{where}",
    errno.ENOTDIR: "a file was found where a directory was expected{where}",
    errno.ENOENT: "no such file or directory{where}",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
    errno.ENAMETOOLONG: "a file name is too long{where}",
    errno.EIO: "input/output error{where}: the disk or network file system failed",
}


def _is_allocation_failure(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    if isinstance(err, RuntimeError):
        text = str(err)
        return any(phrase in text for phrase in (
            "out of memory", "can't allocate memory", "DefaultCPUAllocator", "not enough memory",
            "Cannot allocate memory"))
    return False


def _is_decode_failure(err: BaseException) -> bool:
    import struct
    import zlib

    return isinstance(err, (struct.error, zlib.error, EOFError)) or type(err).__name__ in (
        "TiffFileError", "DecodeError", "ImcdError", "DelayedImportError")


def failure_message(err: BaseException) -> str | None:
    """One line for a ShiftSegError or a failure of the environment, else None.

    Maps permission and disk-space errors (any ``OSError``), allocation failures (``MemoryError``,
    torch's out-of-memory errors) and data that cannot be decoded (``struct``/``zlib`` errors,
    ``TiffFileError``) to a message a user can act on. Anything else is a bug: None, so that the
    caller shows (or logs) the traceback.
    """
    if isinstance(err, ShiftSegError):
        return str(err)
    if _is_allocation_failure(err):
        return (f"not enough memory ({_first_line(err)}); try a smaller --tile, fewer workers, or "
                "a machine (or device) with more memory")
    if _is_decode_failure(err):
        return (f"a file could not be decoded; it is corrupt or truncated ({type(err).__name__}: "
                f"{_first_line(err)})")
    if isinstance(err, OSError):
        template = _OS_MESSAGES.get(err.errno)
        if template is not None:
            return template.format(where=_where(err))
        reason = err.strerror or _first_line(err)
        return f"{reason}{_where(err)}"
    return None
