"""Where the Segment widget puts results that do not fit the memory budget: a zarr group on disk
(:meth:`Session.run_to_zarr <napari_shiftseg.inference.session.Session.run_to_zarr>`, resumable),
shown lazily from there.

No Qt here. The group lives in a per-session temporary folder, named after the image and the
settings that determine the embeddings, so running the same image again with the same model,
tile and mode resumes (or reuses) the stored tiles; a cancelled run keeps its finished tiles.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

from ._common import file_stamp

_SESSION_DIR: Path | None = None


def session_dir() -> Path:
    """A temporary folder for this napari session, removed when Python exits."""
    global _SESSION_DIR
    if _SESSION_DIR is None:
        _SESSION_DIR = Path(tempfile.mkdtemp(prefix="shiftseg-"))
        atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
    return _SESSION_DIR


def output_path(image_name: str, model_path, tile: int, mode: str, diameter=None,
                voxel_size=None) -> Path:
    model_path = Path(model_path)
    # The file's time too: a model trained again under the same name gives other embeddings
    # (segment_to_zarr would refuse to resume the old group).
    stamp = file_stamp(model_path)
    settings = (image_name, str(model_path), stamp, tile, mode, diameter, voxel_size)
    key = hashlib.sha1(repr(settings).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() else "_" for c in image_name)[:40]
    return session_dir() / f"{safe}-{key}.zarr"
