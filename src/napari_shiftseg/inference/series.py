"""Segmenting a time series: every time point on its own, object ids numbered on across time.

Why a module of its own: :func:`~napari_shiftseg.inference.segment.segment_to_zarr` segments one 2D or 3D
image and owns the zarr storage and resume of that one run. A time series (T x [Z x] Y x X) is T
such images that a user wants back as one result, as the Segment widget's "time: every point"
gives it: one labels array with a time axis whose ids are numbered on (time point t's ids start
after the largest id of t - 1), so that an id names one object at one time point across the
whole series. This module only loops ``segment_to_zarr`` over the time points and assembles
their outputs; it adds no rule of its own about tiles, models, object size or clustering, so
each time point is segmented exactly as ``segment_to_zarr`` would segment it alone.

Layout::

    OUT.zarr/                 OME-Zarr image (NGFF 0.5, or 0.4); every axis list starts with t
      image/0                 (T, [C,] [Z,] Y, X) the input that was segmented (the channel or
                              channels the model took): what an NGFF viewer shows under the labels
                              (the layout and its reasons: :mod:`napari_shiftseg.files.ngff`)
      labels/instances/0      (T, [Z,] Y, X) int32, ids numbered on across time: time point
                              t's ids 1..M_t (as segment_to_zarr writes them) + M_0 + ... + M_t-1
      attrs: "shiftseg" (objects per time point, their first ids, the total), "complete"
    .OUT.zarr.frames/         work folder beside the output (hidden)
      series.json             which series the folder belongs to
      t0000.zarr ...          one ``segment_to_zarr`` output per time point (embeddings,
                              foreground, labels and its resume flags)

**The work folder is kept** when the series completes: it holds each time point's embeddings
(as a single-image output does), and its records are what a later run checks its settings
against. So the same command again returns at once; other clustering settings (bandwidth,
min size, ...) label the stored embeddings again without a network pass and re-assemble
``OUT.zarr``; other settings that change the embeddings (model, tile, image) are refused, time
point by time point, by ``segment_to_zarr`` itself, until ``--overwrite``. Delete the folder to
free its space once you are done with the series: ``OUT.zarr`` stays complete and readable, and
a later run on it then has nothing to check against, so it returns ``OUT.zarr`` as it is.

**Resume.** Each time point resumes as ``segment_to_zarr`` does (finished tiles are kept); a
finished time point is not segmented again. ``OUT.zarr`` is assembled only once every time point
is finished, in a sibling ``.OUT.zarr.new`` that is renamed into place, so an interrupted run
never leaves a partial ``OUT.zarr``. ``--overwrite`` segments every time point again (each as
``segment_to_zarr --overwrite`` does) and replaces ``OUT.zarr`` only once the new series is
complete.

**Safety.** Only folders this module or ``segment_to_zarr`` made are ever deleted or renamed: a
user's own folder at one of those names is refused with a message. One run per output at a time
(:class:`~napari_shiftseg.files._lock.OutputLock` on ``OUT.zarr``).

**Memory.** Assembling reads and writes chunk by chunk through dask (one time point x one tile
at a time), never a whole time point or the whole series.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..files import _replace
from ..files._lock import OutputLock
from ..files.io import TimeSeries
from ..files.ngff import IMAGE, LABELS, create_array, dimension_names, image_source, write_metadata
from ..files.ngff import check_version as check_ngff
from ..files.ngff import zarr_format as ngff_zarr_format
from ..util._errors import ShiftSegError

log = logging.getLogger(__name__)

__all__ = ["SERIES_FORMAT", "TimePoint", "frames_path", "segment_series"]

#: ``attrs["shiftseg"]["format"]`` of a time-series output.
SERIES_FORMAT = "napari-shiftseg-series/1"
#: The file in the work folder that says which series it belongs to.
MARKER = "series.json"
_INT32_MAX = int(np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class TimePoint:
    """One finished time point, as :func:`segment_series` tells ``time_point``.

    ``index`` counts from 0 of ``of``; its ``objects`` have the ids ``first_id`` to ``last_id``
    in the series (numbered on); ``reused``: finished by an earlier run with these settings, so
    nothing was computed now; ``warning``: the result warning ``segment_to_zarr`` recorded.
    """

    index: int
    of: int
    objects: int
    first_id: int
    last_id: int
    reused: bool
    warning: str = ""


def frames_path(out_path) -> Path:
    """The work folder of a series output: ``.OUT.zarr.frames`` beside ``OUT.zarr``."""
    out_path = Path(out_path)
    return out_path.parent / f".{out_path.name}.frames"


# --------------------------------------------------------------------------- whose folder is it


def _ours() -> tuple[str, ...]:
    """Outputs a series run may replace or clear away: a series, or a single-image output."""
    from .segment import FORMAT

    return (SERIES_FORMAT, FORMAT)


def _read_marker(frames: Path) -> dict | None:
    """The work folder's marker, or None when ``frames`` is not a work folder of ours."""
    path = frames / MARKER
    if frames.is_symlink() or not frames.is_dir() or path.is_symlink() or not path.is_file():
        return None
    try:
        marker = json.loads(path.read_bytes()[:1 << 16]) if path.stat().st_size < 1 << 16 else None
    except (OSError, ValueError, RecursionError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == SERIES_FORMAT else None


def _existing_output(out_path: Path, overwrite: bool) -> dict | None:
    """The root attributes of a series output already at ``out_path`` (None: nothing there, an
    empty folder, or ``overwrite``); refuses anything that is not ours to resume or replace."""
    from .segment import ATTRS

    if not os.path.lexists(out_path):
        return None
    if out_path.is_dir() and not any(out_path.iterdir()):
        return None
    if not out_path.is_dir() or not _replace.is_zarr_dir(out_path):
        raise ShiftSegError(f"{out_path} exists and is not a zarr output; choose a new output path")
    if overwrite:
        return None  # replaced once the new series is complete (_replace.swap_in)
    attrs = _replace.attrs(out_path)
    record = attrs.get(ATTRS)
    if not isinstance(record, dict) or record.get("format") != SERIES_FORMAT:
        what = ("a single-image shiftseg segmentation" if _replace.is_ours(out_path, _ours())
                else "a zarr group but not a shiftseg time-series segmentation")
        raise ShiftSegError(f"{out_path} is {what}; choose a new output path (or --overwrite to "
                            "replace it)")
    return attrs


def _prepare_frames(frames: Path, out_path: Path, marker: dict, overwrite: bool) -> None:
    """Make (or check) the work folder: ours, and for this very series."""
    if os.path.lexists(frames):
        stored = _read_marker(frames)
        if stored is None:
            raise ShiftSegError(
                f"{frames} exists and was not made by shiftseg (it is the name a series run uses "
                f"for the time points of {out_path.name}): move or rename it, then run again")
        same = all(stored.get(k) == marker[k] for k in ("time_points", "shape"))
        if same:
            return
        if not overwrite:
            shape = "x".join(map(str, stored.get("shape") or ()))
            raise ShiftSegError(
                f"{out_path.name} was started on a series of shape {shape or 'unknown'}, this one is "
                f"{'x'.join(map(str, marker['shape']))}; use a new output path or --overwrite to "
                "start again")
        shutil.rmtree(frames)  # ours (its marker says so), for another series: start again
    frames.mkdir(parents=True)
    (frames / MARKER).write_text(json.dumps(marker))


# --------------------------------------------------------------------------- inputs


def _open_series(path_or_array, channel) -> tuple[TimeSeries, Any, Path | None]:
    """``(series, channel each time point is given with, the input's file)``; for a file the
    channels are picked on reading, for an array by ``segment_to_zarr`` (a list of channels
    indexes the axis after time)."""
    from ..files.io import read_series

    if isinstance(path_or_array, (str, Path)):
        path = Path(path_or_array).expanduser()
        series = read_series(path, channel)
        frame_channel = list(range(len(channel))) if isinstance(channel, (list, tuple)) else None
        return series, frame_channel, path.resolve()
    if isinstance(path_or_array, TimeSeries):
        series = path_or_array
    else:
        if not hasattr(path_or_array, "shape") or not hasattr(path_or_array, "ndim"):
            raise TypeError(f"segment_series takes a file or an array with time first, got "
                            f"{type(path_or_array).__name__}")
        series = TimeSeries(path_or_array, None)
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        raise ShiftSegError("channel picks a channel of an image file; index arrays yourself")
    filename = getattr(series.data, "filename", None)  # a numpy.memmap
    source = Path(filename).resolve() if isinstance(filename, (str, Path)) else None
    return series, channel, source


def _refuse_input_in_output(source: Path | None, out_path: Path) -> None:
    if source is None:
        return
    for place in (out_path, frames_path(out_path), _replace.staging_path(out_path),
                  _replace.retired_path(out_path)):
        if source == place or place in source.parents:
            raise ShiftSegError(f"the input {source} lies inside {place}, which this run writes or "
                                "replaces: choose another output path")


# --------------------------------------------------------------------------- the run


def segment_series(path_or_array, out_path, model=None, options=None, *,
                   progress: Callable[[int, int], None] | None = None,
                   cancel: threading.Event | None = None,
                   stage: Callable[[str], None] | None = None, client=None,
                   time_point: Callable[[TimePoint], None] | None = None, **overrides):
    """Segment every time point of a time series into one OME-Zarr output, ids numbered on.

    Parameters
    ----------
    path_or_array : path, array or :class:`~napari_shiftseg.files.io.TimeSeries`
        A file whose metadata names a time axis (an ImageJ hyperstack ``TYX``/``TZYX``, an
        OME-Zarr with a ``time`` axis; :func:`~napari_shiftseg.files.io.read_series`), or an array
        with time first, (T, [Z,] Y, X) (or (T, C, ...) with ``channel`` a list).
    out_path : str or Path
        Output ``.zarr`` directory; its work folder ``.OUT.zarr.frames`` is made beside it.
    model, options, client, **overrides
        As for :func:`~napari_shiftseg.inference.segment.segment_to_zarr`, used for every time point
        (a file's voxel size is passed on when ``options`` gives none).
    progress : callable(done, total), optional
        Tiles of the time point being segmented (as ``segment_to_zarr`` reports them).
    cancel : threading.Event, optional
        Set it to stop (raises ``progress.Cancelled``): finished time points, and the finished
        tiles of the one running, are kept for the next run.
    stage : callable(str), optional
        Told ``"time point 2/5: tiles"`` (``clustering``, ``labels``) and ``"assembling"``.
    time_point : callable(TimePoint), optional
        Told as each time point is finished, or found finished by an earlier run.

    Returns
    -------
    zarr.Group
        The output group, with ``attrs["complete"] == True``.
    """
    import zarr

    from .segment import ATTRS
    from .segment_options import SegmentOptions

    if options is not None and not isinstance(options, SegmentOptions):
        raise TypeError(f"options must be SegmentOptions, got {type(options).__name__}")
    options = (options or SegmentOptions()).with_overrides(**overrides)
    out_path = Path(out_path).expanduser().resolve()
    if out_path.suffix.lower() != ".zarr":
        raise ShiftSegError(f"the output must be a .zarr directory, got {out_path.name}")
    ngff = check_ngff(options.ngff)
    series, frame_channel, source = _open_series(path_or_array, options.channel)
    _refuse_input_in_output(source, out_path)
    n = len(series)
    if series.data.ndim < 3 or n < 1:
        raise ShiftSegError(f"a time series has a time axis and 2 or 3 spatial axes, got shape "
                            f"{tuple(series.shape)}")
    voxel_size = options.voxel_size if options.voxel_size is not None else series.voxel_size
    frame_options = options.with_overrides(channel=frame_channel, voxel_size=voxel_size)
    if isinstance(model, (str, Path)):  # read once, not once per time point
        from ..network.modelio import load_named

        model = load_named(model)
    frames = frames_path(out_path)
    marker = {"format": SERIES_FORMAT, "output": out_path.name, "time_points": n,
              "shape": [int(s) for s in series.shape]}

    with OutputLock(out_path):
        recovered = _replace.recover_interrupted(out_path, _ours())
        if recovered:
            log.warning("shiftseg: %s", recovered)
        existing = _existing_output(out_path, options.overwrite)
        if existing is not None and existing.get("complete") is True and not os.path.lexists(frames):
            log.warning("shiftseg: %s is complete and its work folder %s was removed: there is "
                        "nothing to check this run's settings against, so it is returned as it "
                        "is (--overwrite segments the series again)", out_path, frames.name)
            return zarr.open_group(out_path, mode="r")
        _prepare_frames(frames, out_path, marker, options.overwrite)

        groups, records, counts = _segment_frames(
            series, frames, model, frame_options, progress=progress, cancel=cancel, stage=stage,
            client=client, time_point=time_point)
        if existing is not None and existing.get("complete") is True \
                and dict(existing.get(ATTRS) or {}).get("frame_records") == records:
            return zarr.open_group(out_path, mode="r")  # nothing changed since it was assembled
        if stage is not None:
            stage("assembling")
        new = _replace.staging_path(out_path)
        _replace.refuse_foreign(new, out_path, _ours())
        if os.path.lexists(new):
            _replace.remove(new)  # an earlier, unfinished assembly of ours
        first_info = dict(groups[0].attrs[ATTRS])
        record = {"format": SERIES_FORMAT, "version": __version__, "time_points": n,
                  "frames": frames.name, "objects": counts,
                  "first_ids": [int(o) + 1 for o in _offsets(counts)],
                  "n_objects": int(sum(counts)), "ngff": ngff, "frame_records": records,
                  "warnings": [str(dict(g.attrs[ATTRS]).get("warning") or "") for g in groups],
                  **({"voxel_size": [float(v) for v in voxel_size]} if voxel_size else {}),
                  **({"unit": series.unit} if series.unit else {}),
                  **({"input": {"path": str(source), "channel": options.channel}}
                     if isinstance(path_or_array, (str, Path)) else {}),
                  **({"tile_note": first_info["tile_note"]} if first_info.get("tile_note") else {})}
        picks = None if isinstance(path_or_array, (str, Path)) else frame_channel
        _assemble(new, series.data, groups, counts, record,
                  channel=isinstance(frame_channel, (list, tuple)), picks=picks, client=client,
                  cancel=cancel)
        _replace.swap_in(new, out_path, _ours())
    return zarr.open_group(out_path, mode="r")


def _segment_frames(series: TimeSeries, frames: Path, model, options, *, progress, cancel, stage,
                    client, time_point):
    """``segment_to_zarr`` on every time point, each into its own output in ``frames``:
    (their groups, what each was made with, their object counts)."""
    from ..util.progress import Cancelled
    from .segment import ATTRS, segment_to_zarr

    n = len(series)
    groups, records, counts, offset = [], [], [], 0
    for t in range(n):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled before time point {t + 1}/{n}")
        stages: list[str] = []

        def frame_stage(name, t=t, stages=stages):
            stages.append(name)
            if stage is not None:
                stage(f"time point {t + 1}/{n}: {name}")

        try:
            group = segment_to_zarr(series.frame(t), frames / f"t{t:04d}.zarr", model, options,
                                    progress=progress, cancel=cancel, stage=frame_stage, client=client)
        except ShiftSegError as err:
            raise ShiftSegError(f"time point {t + 1}/{n}: {err}") from None
        info = dict(group.attrs[ATTRS])
        objects = int(info.get("n_objects") or 0)
        if offset + objects > _INT32_MAX:
            raise ShiftSegError(f"the series has more than {_INT32_MAX} objects: their ids do not "
                                "fit the int32 labels")
        groups.append(group)
        counts.append(objects)
        records.append({k: info.get(k) for k in ("embedding_args", "cluster_args", "n_objects")})
        if time_point is not None:  # nothing staged: it was finished, with these settings, before
            time_point(TimePoint(t, n, objects, offset + 1, offset + objects, not stages,
                                 str(info.get("warning") or "")))
        offset += objects
    return groups, records, counts


def _offsets(counts: list[int]) -> np.ndarray:
    """Each time point's ids start after all ids of the time points before it."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)[:-1]]).astype(np.int64)


def _assemble(target: Path, image, groups, counts: list[int], record: dict, *, channel: bool,
              picks, client, cancel) -> None:
    """Write the series output into ``target``: the input (its channels ``picks`` of an array)
    and the labels numbered on, chunk by chunk; then ``record``, the NGFF metadata (its version,
    voxel size and unit from ``record``) and, last, ``complete``."""
    import dask.array as da
    import zarr

    from .segment import ATTRS

    first = groups[0][LABELS]
    spatial, chunk = tuple(first.shape), tuple(first.chunks)
    n, version = len(groups), record["ngff"]
    group = zarr.open_group(target, mode="w", zarr_format=ngff_zarr_format(version))
    group.attrs[ATTRS] = record  # first: an interrupted assembly is ours to remove
    planes = []
    for g, offset in zip(groups, _offsets(counts)):
        labels = da.from_zarr(g[LABELS])
        if tuple(labels.shape) != spatial:
            raise RuntimeError(f"time point labels of shape {labels.shape}, expected {spatial}")
        labels = labels.rechunk(chunk)
        planes.append(da.where(labels > 0, labels + np.int32(offset), np.int32(0)).astype(np.int32))
    numbered = da.stack(planes, axis=0)
    labels_out = create_array(group, version, LABELS, (n, *spatial), (1, *chunk), "int32",
                              names=dimension_names(len(spatial), time=True))

    source = image_source(image, (1, *((-1,) if channel else ()), *chunk))
    if picks is not None:
        source = source[:, list(picks)]
    lead = (int(source.shape[1]),) if channel else ()
    if tuple(source.shape) != (n, *lead, *spatial):
        raise RuntimeError(f"the input is {source.shape}, the labels {(n, *spatial)}")
    image_out = create_array(group, version, IMAGE, source.shape, (1, *lead, *chunk), source.dtype,
                             names=dimension_names(len(spatial), channel=channel, time=True))
    stored = da.store([numbered, source], [labels_out, image_out], lock=False, compute=False)
    _compute(stored, client, cancel)
    write_metadata(group, version, voxel_size=record.get("voxel_size"), unit=record.get("unit"),
                   channel=channel, time=True)
    group.attrs["complete"] = True


def _compute(collection, client, cancel) -> None:
    """Compute on the client, or on a thread pool of this call's own that is drained even when
    cancelled (no task goes on writing into a folder the next run may remove)."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from ..util import progress as _progress

    if client is not None:
        _progress.compute(collection, cancel=cancel, scheduler=client)
        return
    import dask.threaded
    from dask.system import CPU_COUNT

    pool = ThreadPoolExecutor(max(1, CPU_COUNT))
    try:
        _progress.compute(collection, cancel=cancel, scheduler=partial(dask.threaded.get, pool=pool))
    finally:
        pool.shutdown(wait=True)
