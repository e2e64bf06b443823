"""An exclusive lock per output: one shiftseg run writes into an output at a time.

The lock is a file next to the output (``.OUT.zarr.lock``) holding the owner's pid, host and
start time. It is taken atomically with ``flock`` on that file, so a run that dies (even by
``kill -9``) releases it with its process; the file it leaves behind is then recognised as stale,
reported, and taken over. Where ``flock`` is not available the file is created exclusively
(``O_EXCL``), and a leftover of a process that no longer runs on this host counts as stale.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from types import ModuleType

from ..util._errors import ShiftSegError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["OutputLock", "lock_path"]

log = logging.getLogger(__name__)


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    since = holder.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists but not ours (or unreadable): assume alive
    return True


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode()) if data.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class OutputLock:
    """``with OutputLock(out_path):`` - raises ShiftSegError naming the holder if taken."""

    def __init__(self, output):
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._fd: int | None = None
        #: The holder of a stale lock that was taken over (None if there was none).
        self.stale: dict | None = None

    def _refuse(self, holder: dict):
        raise ShiftSegError(
            f"{self.output} is in use by another shiftseg run ({_describe(holder)}); wait for it "
            f"to finish or stop it (the lock is {self.path})")

    def _stale(self, holder: dict) -> None:
        self.stale = holder
        log.warning("shiftseg: taking over the stale lock %s left by %s, which is no longer "
                    "running", self.path, _describe(holder))

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(20):
            fd = self._take(me)
            if fd is not None:
                self._fd = fd
                return self
        raise ShiftSegError(f"could not take the lock {self.path} (it keeps changing)")

    def _open(self, flags: int) -> int:
        """Open the lock file without following a symlink planted at its path (its target
        would receive the lock's JSON), and only if it is a plain file."""
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ShiftSegError(f"the lock path {self.path} is a symbolic link; shiftseg never "
                                    "writes through one: remove it and run again") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ShiftSegError(f"the lock path {self.path} is not a plain file; remove it and run again")
        return fd

    def _take(self, me: dict) -> int | None:
        if fcntl is not None:
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read(fd)
                    os.close(fd)
                    self._refuse(holder)
                os.close(fd)
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                return self._take_exclusive(me)  # no flock on this file system
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and flock: try again
                os.close(fd)
                return None
            previous = _read(fd)
            if previous:  # its owner died without removing it
                self._stale(previous)
            self._write(fd, me)
            return fd
        return self._take_exclusive(me)

    def _take_exclusive(self, me: dict) -> int | None:
        try:
            fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            try:
                fd = self._open(os.O_RDONLY)
            except FileNotFoundError:
                return None
            holder = _read(fd)
            os.close(fd)
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                self._stale(holder)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                return None
            self._refuse(holder)
        self._write(fd, me)
        return fd

    @staticmethod
    def _write(fd: int, me: dict) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: a waiter then sees a new inode
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
