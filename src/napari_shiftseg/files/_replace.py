"""Replacing an output folder without ever losing it (``--overwrite``, a series' assembly).

The new output is written beside the old one (``.OUT.zarr.new``), then swapped in: rename
the old one to ``.OUT.zarr.old``, rename the new one into place, delete the old one. A crash
between the two renames is repaired by the next run (:func:`recover_interrupted`), under the
output's lock. Only siblings that are shiftseg outputs (a real directory whose record names one
of the caller's ``formats``) are ever deleted or renamed; a user's own folder or a symlink of
those names is refused with a message and left alone. One owner for :mod:`.segment` (one
image) and :mod:`.series` (a time series).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..util._errors import ShiftSegError

__all__ = ["RECORD", "staging_path", "retired_path", "is_zarr_dir", "attrs", "record", "is_ours", "is_complete",
           "refuse_foreign", "remove", "recover_interrupted", "swap_in"]

#: The root attribute holding a shiftseg output's record (``segment.ATTRS``).
RECORD = "shiftseg"


def staging_path(path: Path) -> Path:
    """Sibling directory a replacing run is written to before it takes ``path``'s place."""
    return path.parent / f".{path.name}.new"


def retired_path(path: Path) -> Path:
    """Sibling the replaced output is renamed to while the new one is swapped in."""
    return path.parent / f".{path.name}.old"


def is_zarr_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def attrs(path: Path) -> dict:
    """The root attributes of the zarr group at ``path``; {} when none or unreadable."""
    import zarr

    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable: not provably ours, not complete
        return {}


def record(path: Path) -> dict:
    """The shiftseg record of the zarr group at ``path``; {} if none or unreadable."""
    stored = attrs(path).get(RECORD)
    return stored if isinstance(stored, dict) else {}


def is_ours(path: Path, formats: tuple[str, ...]) -> bool:
    """A real directory (never a symlink) holding a shiftseg output of one of ``formats``."""
    if path.is_symlink() or not path.is_dir() or not is_zarr_dir(path):
        return False
    return record(path).get("format") in formats


def is_complete(path: Path) -> bool:
    return attrs(path).get("complete") is True


def refuse_foreign(path: Path, out_path: Path, formats: tuple[str, ...]) -> None:
    if os.path.lexists(path) and not is_ours(path, formats):
        raise ShiftSegError(
            f"{path} exists and was not made by shiftseg (it is the name shiftseg uses for its "
            f"temporary copy of {out_path.name} while replacing it): move or rename it, then run again")


def remove(path: Path) -> None:
    """Delete a sibling already checked to be ours (a folder; a leftover file or link too)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def recover_interrupted(out_path: Path, formats: tuple[str, ...]) -> str | None:
    """Finish or undo a replacement that stopped between its two renames (see :func:`swap_in`).

    Call it with the output's lock held, before anything else. Returns what was done, in words,
    or None when there was nothing to recover.
    """
    new, old = staging_path(out_path), retired_path(out_path)
    if not os.path.lexists(old):
        return None
    refuse_foreign(old, out_path, formats)
    if os.path.lexists(out_path):
        # The swap finished but the old copy was not deleted yet: it is the replaced output.
        remove(old)
        return f"removed {old.name}, the replaced output an interrupted --overwrite left behind"
    if os.path.lexists(new) and is_ours(new, formats) and is_complete(new):
        os.replace(new, out_path)  # the new run was complete: finish the swap
        remove(old)
        return (f"an earlier --overwrite of {out_path.name} stopped between its renames: its "
                "finished result is now in place and the replaced output was removed")
    os.replace(old, out_path)  # nothing finished to put in its place: give the old one back
    return (f"an earlier --overwrite of {out_path.name} stopped half way: the previous output "
            "was put back")


def swap_in(new: Path, path: Path, formats: tuple[str, ...]) -> None:
    """Put the finished ``new`` in place of ``path``: rename, rename, then delete the old one.

    The old output is only deleted once the new one is in place; if the second rename fails,
    the old output is put back. With nothing at ``path`` (or an empty folder the user made)
    ``new`` is simply renamed into place.
    """
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
        os.replace(new, path)
        return
    old = retired_path(path)
    refuse_foreign(old, path, formats)
    if os.path.lexists(old):
        remove(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
