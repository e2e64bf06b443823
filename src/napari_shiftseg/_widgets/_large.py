"""Images whose results do not fit the memory budget: segmented into a zarr group on disk
(:func:`napari_shiftseg.inference.segment.segment_to_zarr`, resumable) and shown lazily from there.

No Qt here. The group lives in a per-session temporary folder, named after the image and the
settings that determine the embeddings, so running the same image again with the same model,
tile and mode resumes (or reuses) the stored tiles; a cancelled run keeps its finished tiles.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import zarr

from ..files.ngff import LABELS
from ..imaging import rescale
from ..inference import diagnostics
from ..inference.segment import ATTRS, segment_to_zarr, stored_plan
from ..inference.segment import recluster as recluster_zarr
from ._common import file_stamp
from ._pipeline import ModelCache
from ._results import Resampled

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


@dataclass
class LargeResult:
    """A finished zarr segmentation; ``embeddings``/``labels`` are lazy views of it."""

    path: Path
    embeddings: da.Array
    labels: da.Array
    diagnostics: dict
    foreground: bool
    origin: tuple | None = None
    resampled: object = None  # a _results.Resampled when the network ran on a resampled image
    note: str = ""            # what the user should know (e.g. the tile was snapped to n·f^l)


def _open(path: Path, plan, model, image, device) -> LargeResult:

    group = zarr.open_group(str(path), mode="r")
    embeddings = da.from_zarr(group["embeddings"])
    shape = embeddings.shape[1:]
    geometry = model.geometry
    resampled = None
    if tuple(shape) != tuple(image.shape):  # the network ran on the image resampled
        resampled = Resampled((0,) * len(shape), tuple(shape), tuple(image.shape),
                              shape[-1] / image.shape[-1])
        source = image if isinstance(image, da.Array) else da.from_array(image)
        image = rescale.resize_image(source, shape=shape)
    # Lazy: napari computes the reference only for the tiles of the slice on screen.
    per_slice = geometry.ndim < len(shape)
    diag = diagnostics.run_diagnostics(embeddings, image, model, plan, device=device, per_slice=per_slice)
    record = group.attrs[ATTRS]
    note = record.get("tile_note", "") if isinstance(record, dict) else ""
    return LargeResult(path, embeddings, da.from_zarr(group[LABELS]), diag, "foreground" in group,
                       resampled=resampled, note=str(note))


def segment(report, cancel, image, model_path, params, out_path: Path) -> LargeResult:
    """Tiles -> zarr (progress per tile), cluster, label; then lazy views of the results."""
    stage = {"name": "tiles"}

    def on_stage(name: str) -> None:
        stage["name"] = name
        report(0, 1, name)

    model = ModelCache().get(model_path, params.device)
    # A multi-channel model reads a channel-first array holding its channels.
    channel = list(range(model.config.in_channels)) if model.config.in_channels > 1 else None
    # The form's settings go as they are: what the user switched off stays off.
    segment_to_zarr(image, out_path, model=model, tile=params.tile, device=params.device,
                    mode=params.mode, settings=params.settings,
                    progress=lambda d, t: report(d, t, stage["name"]),
                    cancel=cancel, stage=on_stage, diameter=params.diameter,
                    isotropic="auto" if params.voxel_size is not None else False,
                    voxel_size=params.voxel_size, channel=channel)
    return _open(out_path, stored_plan(out_path, model.geometry), model, image, params.device)


def recluster(report, cancel, result: LargeResult, params) -> tuple[da.Array, None]:
    """Mean-shift and labelling again from the stored embeddings (no network pass): (instances,
    None: results on disk keep no per-voxel clusters)."""

    recluster_zarr(result.path, params.settings, cancel=cancel, stage=lambda name: report(0, 1, name))
    # A new dask name, so nothing cached for the old labels is shown again.
    labels = zarr.open_group(str(result.path), mode="r")[LABELS]
    return da.from_zarr(labels, name=f"shiftseg-labels-{uuid.uuid4().hex}"), None
