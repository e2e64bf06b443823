"""The resumable segmentation job: image -> zarr group with the input, embeddings, foreground
and labels.

Used by ``shiftseg segment`` and by the napari plugin for images too big for one go. Layout of
the output group, an OME-Zarr image (:mod:`.ngff`; every array chunked by the output tile)::

    OUT.zarr/
      image/0     ([C,] *image) as read      the input that was segmented: the NGFF image
      labels/instances/0  (*image) int32     instances 1..M, 0 = background: its label image
      embeddings  (E+1, *spatial) float32   network output, foreground logit last
      foreground  (*spatial) float32         sigmoid of the logit (models with a foreground head)
      labels_resampled                       only when the network ran on the image resampled
                                             to the model's object size (``diameter``): the
                                             labels on that grid; ``embeddings``/``foreground``
                                             are on it too, the labels and the input on the
                                             image's grid
      done        (tile grid) bool           True once a tile's chunks are completely written
      attrs: "shiftseg" (the run's arguments, clustering, counts, "input_stored" once the
             input is copied), "complete" (only when done)

**Nothing is lost on interruption.** Each tile is one chunk of ``embeddings`` and one of
``foreground``; the task that computed it writes both (zarr writes every chunk file to a
temporary name and renames it, so a chunk is either old or new, never torn) and only *then* sets
its ``done`` flag. A run that is interrupted (Ctrl-C, cancel, a killed worker) and started again
with the same arguments skips the tiles marked done; a tile whose chunks were written but whose
flag was not is computed again. Tiles are exact (THEORY.md, result 3), so the resumed result is
identical to an uninterrupted run. Once every tile is done the input is copied into ``image/0``,
chunk by chunk, and ``input_stored`` recorded (a run interrupted during the copy copies it again;
one that finds it recorded never does); the labels are then computed from the stored embeddings,
and ``complete: true`` is written last, so an interrupted output never looks complete.

**One run per output.** A run holds an exclusive lock on its output (:mod:`._lock`) from start to
finish, so attribute updates (read-modify-write) never race; a second run is refused, naming
the holder.

**Arguments.** The settings that determine the embeddings (image, model, tile, mode) are stored
and a later run with different ones is refused. Changing only the clustering settings
(bandwidth, min_size, fg_threshold, ...) reuses the stored embeddings and just labels again, as
does :func:`recluster`.

**Clusters.** With ``client`` (a ``distributed.Client``) every step runs on the cluster: the
workers write into ``out_path`` themselves, so it must be on a file system they all see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
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
from ..files.ngff import IMAGE, LABELS, create_array, dimension_names, image_source
from ..files.ngff import check_version as check_ngff
from ..files.ngff import write_metadata as write_ngff
from ..files.ngff import zarr_format as ngff_zarr_format
from ..imaging import rescale
from ..network.devices import resolve_tile
from ..network.settings import SegmentationSettings
from ..network.tiling import TilePlan, tile_plan
from ..util._errors import ShiftSegError
from . import size_check
from .cluster import check_resources, runner, tile_threads
from .segment_options import ClusterOptions, SegmentOptions, settings_and_clustering

log = logging.getLogger(__name__)

__all__ = ["ATTRS", "recluster", "segment_to_zarr"]

#: Group attribute holding the run's arguments and results.
ATTRS = _replace.RECORD  # "shiftseg"
#: /2: an OME-Zarr image (ngff.py): the labels moved to ``labels/instances/0``. Outputs of /2
#: written before issue 26 have the embeddings as their NGFF image and no ``image/0``; since then
#: the input is the NGFF image (``input_stored`` in the record once it is copied). What shiftseg
#: reads (embeddings, foreground, labels, done) is the same in both, so both are /2.
FORMAT = "napari-shiftseg-segmentation/2"
_ARRAYS = ("embeddings", "foreground", LABELS, "done", IMAGE)
# Tiles handed to the scheduler at a time (raised to 4 per worker thread on big clusters).
_TILE_BATCH = 256
# The input is hashed in slabs of whole planes (first axis) of about this many bytes, in parallel:
# every voxel counts, so a resume on an edited image is refused.
_FINGERPRINT_SLAB = 64 * 2**20


# --------------------------------------------------------------------------- arguments


def _load_model(model, ndim: int):
    from ..network.modelio import Model, load_bundled, load_named
    from ..network.unet import UNet

    if model is None:
        return load_bundled(ndim)
    if isinstance(model, (str, Path)):
        return load_named(model)
    if isinstance(model, UNet):
        return Model(model)
    if isinstance(model, Model):
        return model
    raise TypeError(f"model must be a Model, UNet or a model file path, got {type(model).__name__}")


def _model_fingerprint(model) -> str:
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _hash_slab(block) -> str:
    block = np.ascontiguousarray(block)
    return hashlib.blake2b(memoryview(block).cast("B"), digest_size=16).hexdigest()


def _slab_planes(image) -> int:
    """Planes (along the first axis) per hashed slab: depends on shape and dtype only, so the
    same image gives the same slabs however it is chunked or stored."""
    plane = math.prod(image.shape[1:]) * np.dtype(image.dtype).itemsize
    return max(1, min(int(image.shape[0]), _FINGERPRINT_SLAB // max(plane, 1)))


def _image_fingerprint(image, compute=None) -> dict:
    """A hash of every voxel: one digest per slab of planes, hashed lazily and in parallel.

    Returns ``{"digest": ..., "planes": planes per slab, "slabs": [digest per slab]}``.
    """
    import dask
    import dask.array as da

    planes = _slab_planes(image)
    chunks = (planes,) + tuple(image.shape[1:])
    if isinstance(image, da.Array):
        array = image.rechunk(chunks)
    else:
        array = da.from_array(image, chunks=chunks, asarray=True, name=False)
    tasks = [dask.delayed(_hash_slab, pure=True)(block) for block in array.to_delayed().ravel()]
    slabs = list(compute(*tasks) if compute is not None else dask.compute(*tasks, scheduler="threads"))
    digest = hashlib.sha256(f"{tuple(image.shape)}|{np.dtype(image.dtype).str}|{planes}".encode())
    for slab in slabs:
        digest.update(slab.encode())
    return {"digest": digest.hexdigest(), "planes": planes, "length": int(image.shape[0]),
            "slabs": slabs}


def _embedding_args(image, model, plan, mode, fingerprint: dict) -> dict:
    return {"image_shape": list(image.shape), "image_dtype": np.dtype(image.dtype).str,
            "image": fingerprint["digest"], "model": _model_fingerprint(model),
            "tile": list(plan.tile), "mode": mode}


def _changed_planes(stored: dict | None, fingerprint: dict) -> str:
    """Which planes of the first axis differ from the stored fingerprint ('' if unknown)."""
    if not isinstance(stored, dict) or stored.get("planes") != fingerprint["planes"] \
            or len(stored.get("slabs") or ()) != len(fingerprint["slabs"]):
        return ""
    planes = fingerprint["planes"]
    changed = [i for i, (a, b) in enumerate(zip(stored["slabs"], fingerprint["slabs"])) if a != b]
    if not changed:
        return ""
    ranges, start = [], changed[0]
    for prev, cur in zip(changed, changed[1:] + [-1]):  # -1: the end (never prev + 1)
        if cur != prev + 1:
            ranges.append(f"{start * planes}-{min((prev + 1) * planes, fingerprint['length']) - 1}")
            start = cur
    shown = ", ".join(ranges[:5]) + (" ..." if len(ranges) > 5 else "")
    return f" (the voxels changed in planes {shown} of the first axis)"


_NAMES = {"image_shape": "image shape", "image_dtype": "image type", "image": "image content",
          "model": "model", "tile": "tile", "mode": "mode",
          "resampled_to": "object-size resampling (resampled image shape)",
          "ngff": "OME-Zarr version"}
#: Arguments stored as digests (compared, never shown).
_HASHED = ("image", "model")


# --------------------------------------------------------------------------- the output group


def _input_path(image) -> Path | None:
    """The file or directory an image is read from, where it can be known."""
    if isinstance(image, (str, Path)):
        return Path(image).expanduser().resolve()
    filename = getattr(image, "filename", None)  # numpy.memmap
    return Path(filename).resolve() if isinstance(filename, (str, Path)) else None


def _refuse_input_in_output(image, out_path: Path) -> None:
    """An output that is, or contains, the input would destroy it: refuse before anything."""
    source = _input_path(image)
    if source is None:
        return
    # --overwrite writes beside the output and renames: those siblings are replaced too.
    for place in (out_path, _replace.staging_path(out_path), _replace.retired_path(out_path)):
        if source == place or place in source.parents:
            raise ShiftSegError(
                f"the input {source} lies inside {place}, which this run would replace (or "
                "--overwrite would): that would destroy the input; choose another output path")


def _swap_in(new: Path, path: Path) -> None:
    """Replace ``path`` by the finished ``new`` tree; a crash between the renames is repaired by
    the next run (:mod:`._replace`)."""
    _replace.swap_in(new, path, (FORMAT,))


def _open_output(path: Path, overwrite: bool):
    """The existing output group (to resume) or None (nothing there, or ``overwrite``).

    Nothing is deleted here: with ``overwrite`` the caller writes the new run elsewhere and
    swaps it in once it is complete (:func:`_swap_in`).
    """
    import zarr

    if not path.exists():
        return None
    if not path.is_dir() or not _replace.is_zarr_dir(path):
        if path.is_dir() and not any(path.iterdir()):
            return None
        raise ShiftSegError(f"{path} exists and is not a zarr output; choose a new output path")
    if overwrite:
        return None
    try:
        group = zarr.open_group(path, mode="r+")
    except Exception as err:  # noqa: BLE001 - any zarr failure means "not ours"
        raise ShiftSegError(f"{path} is not a readable zarr group ({err}); use --overwrite") from None
    stored: Any = group.attrs.get(ATTRS) or {}
    if dict(stored).get("format") != FORMAT:
        raise ShiftSegError(
            f"{path} is a zarr group but not a shiftseg segmentation; choose a new output path "
            "(or --overwrite to replace it)")
    return group


def _check_resume(group, args: dict, path: Path, fingerprint: dict | None = None) -> None:
    attrs = dict(group.attrs[ATTRS])
    stored = attrs.get("embedding_args", {})
    changed = [k for k in args if stored.get(k) != args[k]]
    if changed:
        details = []
        for key in changed:
            text = _NAMES.get(key, key)
            if key in _HASHED:  # digests say nothing to a reader: say what differs instead
                text += {"model": " (other weights)", "image": " (other voxels)"}[key]
                if key == "image" and fingerprint is not None:
                    text += _changed_planes(attrs.get("image_slabs"), fingerprint)
            else:
                text += f" (was {_shown(stored.get(key), key)}, now {_shown(args[key], key)})"
            details.append(text)
        raise ShiftSegError(
            f"{path} was started with a different {', '.join(details)}; to resume, repeat the "
            "first run's settings, or use a new output path or --overwrite to start again")


def _shown(value, key: str = "") -> str:
    """A stored argument as a user typed it: 128x128 for a tile, plain text otherwise."""
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if value is None:
        return "none: as imaged" if key == "resampled_to" else "unknown"
    return str(value)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What an output holds: the network's grid (``spatial``, resampled or not), its chunks
    (``chunk``, one per tile) and their number per axis (``grid``); ``image_shape`` is the
    input's own grid when the network ran on a resampled image. The input is stored as it was
    read: ``input_dtype``, with ``input_channels`` on a first axis (a multi-channel model's
    input) or none (0)."""

    spatial: tuple[int, ...]
    channels: int
    chunk: tuple[int, ...]
    grid: tuple[int, ...]
    foreground: bool
    image_shape: tuple[int, ...] | None = None
    ngff: str = "0.5"
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    input_dtype: str = "float32"
    input_channels: int = 0


def _create_output(path: Path, layout: _Layout, attrs: dict):
    """The output arrays and their OME-Zarr metadata (:mod:`ngff`): the input, empty until it is
    copied (:func:`_store_input`), is the NGFF image; with ``image_shape`` (a resampled run) the
    labels and the input are on the image's grid and the network's labels go to
    ``labels_resampled``."""
    import zarr

    spatial, channels, tile, grid = layout.spatial, layout.channels, layout.chunk, layout.grid
    image_shape, voxel_size = layout.image_shape, layout.voxel_size
    version = check_ngff(layout.ngff)
    group = zarr.open_group(path, mode="w", zarr_format=ngff_zarr_format(version))

    def array(name, shape, chunks, dtype, fill, channel=False):
        # NGFF 0.5: every array names its axes (zarr v3 dimension_names), as its metadata does.
        names = None if name == "done" else dimension_names(len(shape) - channel, channel=channel)
        return create_array(group, version, name, shape, chunks, dtype, fill, names=names)

    net_spatial, net_tile = tuple(spatial), tuple(tile)
    if image_shape is not None:
        array("labels_resampled", spatial, tile, "int32", 0)
        attrs = {**attrs, "resampled": {"image_shape": list(image_shape), "working_shape": list(spatial)}}
        spatial = tuple(image_shape)
        tile = tuple(min(t, n) for t, n in zip(tile, spatial))
    lead = (layout.input_channels,) if layout.input_channels else ()
    array(IMAGE, (*lead, *spatial), (*lead, *tile), layout.input_dtype, 0, channel=bool(lead))
    array("embeddings", (channels, *net_spatial), (channels, *net_tile), "float32", 0.0, channel=True)
    if layout.foreground:
        array("foreground", net_spatial, net_tile, "float32", 0.0)
    array(LABELS, spatial, tile, "int32", 0)
    # One chunk per flag: each tile's flag is its own (atomically renamed) file.
    array("done", grid, (1,) * len(grid), "bool", False)
    group.attrs[ATTRS] = {**attrs, "ngff": version}
    voxel = tuple(voxel_size) if voxel_size else (1.0,) * len(spatial)
    write_ngff(group, version, voxel_size=voxel, unit=layout.unit, channel=bool(lead))
    return group


def _store_input(group, image, compute, stage) -> None:
    """Copy the input into the output's NGFF image, chunk by chunk, once: the first run to
    finish its tiles does it and records ``input_stored``; a run interrupted here copies it
    again (each chunk is written whole or not at all), one that finds it recorded does not.
    An output written before the input was stored (no ``image/0``) is left as it is."""
    import dask.array as da

    if IMAGE not in group or dict(group.attrs[ATTRS]).get("input_stored") is True:
        return
    if stage:
        stage("copying the image")
    target = group[IMAGE]
    source = image_source(image, target.chunks)
    if tuple(source.shape) != tuple(target.shape):
        raise RuntimeError(f"the input is {source.shape}, its copy {target.shape}")
    compute(da.store(source, target, lock=False, compute=False))
    _set_attrs(group, input_stored=True)


def _done_flags(done) -> np.ndarray:
    """The done flags; an unreadable flag (torn by a crash) counts as not done."""
    try:
        return np.asarray(done[...], dtype=bool)
    except Exception:  # noqa: BLE001 - fall back to flag by flag
        flags = np.zeros(done.shape, bool)
        for index in np.ndindex(done.shape):
            try:
                flags[index] = bool(done[index])
            except Exception:  # noqa: BLE001
                flags[index] = False
        return flags


def _set_attrs(group, **values) -> None:
    attrs = dict(group.attrs[ATTRS])
    attrs.update(values)
    group.attrs[ATTRS] = attrs


# --------------------------------------------------------------------------- tasks


def _write_tile(block, embeddings, foreground, done, region, index):
    """Write one tile's chunks, then (only then) flag it done; refuse non-finite embeddings."""
    block = np.asarray(block, dtype=np.float32)
    if not np.isfinite(block).all():
        where = ", ".join(f"{r.start}:{r.stop}" for r in region)
        raise ShiftSegError(
            f"the network produced NaN or infinite embeddings in tile {tuple(index)} (voxels "
            f"{where}); the model is broken or the image holds extreme values. Nothing was marked "
            "done for this tile")
    embeddings[(slice(None),) + region] = block
    if foreground is not None:
        logit = block[-1].astype(np.float64)
        foreground[region] = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    done[index] = True
    return 1


# --------------------------------------------------------------------------- public API


def segment_to_zarr(image, out_path, model=None, options: SegmentOptions | None = None, *,
                    progress: Callable[[int, int], None] | None = None,
                    cancel: threading.Event | None = None, stage: Callable[[str], None] | None = None,
                    client=None, **overrides):
    """Segment ``image`` into an OME-Zarr group, resuming an interrupted run of the same arguments.

    Parameters
    ----------
    image : array-like or path
        2D (y, x) or 3D (z, y, x) image (numpy, dask, zarr), or a file for
        :func:`~napari_shiftseg.files.io.read_image`.
    out_path : str or Path
        Output ``.zarr`` directory; created, or resumed when it holds an interrupted run.
    model : Model, UNet, path or None
        The network; None takes the bundled default model for the image's dimensionality.
    options : SegmentOptions, optional
        Tile, device, mode, segmentation settings, clustering, object size, channels, per-slice
        and isotropic runs, overwrite, OME-Zarr version, tile resources
        (:class:`~napari_shiftseg.inference.segment_options.SegmentOptions`; defaults there).
    progress : callable(done, total), optional
        Called as tiles finish, counting tiles done by earlier runs too.
    cancel : threading.Event, optional
        Set it to stop after the tiles in flight (raises ``progress.Cancelled``); finished tiles
        are kept for the next run.
    client : distributed.Client, optional
        Run on a dask.distributed cluster (``out_path`` must be visible to its workers).
    stage : callable(str), optional
        Told when a new stage starts ("tiles", "clustering", "labels").
    **overrides
        Fields of ``options`` to change, by name (``tile=64``, ``seed=3``).

    Returns
    -------
    zarr.Group
        The output group, with ``attrs["complete"] == True``.

    Raises
    ------
    ShiftSegError
        Bad arguments, a model of the wrong dimensionality, or an output started with other
        settings.
    progress.Cancelled
        When ``cancel`` was set.
    """
    from ..files.io import image_info, read_spatial

    if options is not None and not isinstance(options, SegmentOptions):
        raise TypeError(f"options must be SegmentOptions, got {type(options).__name__}")
    options = (options or SegmentOptions()).with_overrides(**overrides)
    o = options
    channel, diameter, per_slice, voxel_size = o.channel, o.diameter, o.per_slice, o.voxel_size
    device, mode, isotropic = o.device, o.mode, o.isotropic

    out_path = Path(out_path).expanduser().resolve()
    if out_path.suffix.lower() != ".zarr":
        raise ShiftSegError(f"the output must be a .zarr directory, got {out_path.name}")
    _refuse_input_in_output(image, out_path)
    source_file, unit = None, None
    ngff = check_ngff(o.ngff)
    if isinstance(image, (str, Path)):
        source_file = {"path": str(Path(image).expanduser().resolve()), "channel": channel}
        info = image_info(image)
        voxel_size, unit = voxel_size or info["voxel_size"], info["unit"]
        image = read_spatial(image, channel)
    elif isinstance(channel, (list, tuple)):
        image = image[list(channel)]  # a channel-first array: the channels the model takes
    elif channel is not None:
        raise ShiftSegError("channel picks a channel of an image file; index arrays yourself")
    _refuse_input_in_output(image, out_path)
    # Several channels picked: a channel-first stack for a multi-channel network.
    lead = int(isinstance(channel, (list, tuple)))
    if image.ndim - lead not in (2, 3):
        raise ShiftSegError(f"the image must be 2D (y, x) or 3D (z, y, x), got shape {tuple(image.shape)}")
    if o.voxel_size is not None and len(tuple(o.voxel_size)) != image.ndim - lead:
        # Dropping it silently would hide a mix-up of files (a 2D image where a stack was meant).
        axes = "y, x" if image.ndim - lead == 2 else "z, y, x"
        raise ShiftSegError(f"the voxel size {tuple(o.voxel_size)} has {len(tuple(o.voxel_size))} "
                            f"values but the image is {image.ndim - lead}D ({axes}): give one "
                            "value per axis")
    # A stack thinner than its nuclei (a few planes through cells 10 um thick) is a slab of cut
    # nuclei: the bundled 3D model learnt whole ones, the 2D model sees what the slab shows.
    # So with no model named, such a stack runs the 2D model plane by plane (issue 24).
    estimate, slab_note = None, ""
    if model is None and not lead and image.ndim == 3 and diameter == "auto" and per_slice is None:
        from ..imaging.sizing import estimate_size

        estimate = estimate_size(image, _usable_voxel_size(voxel_size, 3))
        if estimate is not None and estimate.thin:
            model, per_slice = "bundled:2", True
            slab_note = "the bundled 2D model ran plane by plane, objects linked across z"
    model = _load_model(model, image.ndim - lead)
    geometry = model.geometry
    tile = resolve_tile(o.tile, geometry, model, device)  # "auto": the largest that fits in memory
    if model.config.in_channels != (image.shape[0] if lead else 1):
        given = (f"{image.shape[0]} channels ({', '.join(map(str, channel))})"
                 if isinstance(channel, (list, tuple)) else "one channel")
        raise ShiftSegError(f"the model takes {model.config.in_channels} input channel(s) but the image "
                            f"gives {given}; pick {model.config.in_channels} with --channels")
    # Cluster settings belong to the model (tuned on held-out annotations when it was trained);
    # what the caller gives wins.
    settings = options.settings_for(model)
    if lead:
        if per_slice or isotropic is True or (diameter not in (None, "auto")):
            raise ShiftSegError("a multi-channel model segments the image as imaged: leave out "
                                "--diameter, --isotropic and per-slice runs")
        diameter, per_slice = None, False  # trained on the user's own images, at their scale
    # A 2D model on a 3D stack runs slice by slice (exactly tiled in-plane); the slices'
    # instances are linked across z by the labelling: voxels of one embedding cluster that
    # touch across z are one object (same centre in the plane, overlapping).
    if per_slice is None:
        per_slice = geometry.ndim == 2 and image.ndim == 3
    if per_slice and not (geometry.ndim == 2 and image.ndim == 3):
        raise ShiftSegError(f"per_slice runs a 2D model on a 3D image; here the model is "
                            f"{geometry.ndim}D and the image {image.ndim}D")
    if geometry.ndim != image.ndim - lead and not per_slice:
        raise ShiftSegError(
            f"the model is {geometry.ndim}D but the image is {image.ndim}D (shape "
            f"{tuple(image.shape)}); use a {image.ndim}D model")
    spatial_ndim = image.ndim - lead
    # The network may run on a resampled image (the model's object size); the input's own
    # shape and voxels still identify the run (fingerprint), the labels return to its grid.
    source_shape = tuple(image.shape)
    if isotropic is True:
        voxel_size = _check_voxel_size(voxel_size, image.ndim)
    resampling = None
    net_image = image
    if not lead:
        usable = _usable_voxel_size(voxel_size, image.ndim)
        resampling = rescale.plan_resampling(
            image, model, diameter, voxel_size=usable, isotropic=isotropic, lead=int(bool(per_slice)),
            estimate=estimate if estimate is not None and (not per_slice or estimate.thin) else None,
            refine=None if per_slice else size_check.refiner(
                image, model, options.with_overrides(voxel_size=usable), cancel))
        if not resampling.identity:
            import dask.array as da

            source = image if isinstance(image, da.Array) else da.from_array(image, asarray=True, name=False)
            net_image = rescale.resize_image(source, shape=rescale.check_growth(image.shape, resampling.factors))
    size_note = "; ".join(filter(None, [slab_note, resampling.note if resampling else ""]))
    from .sanity import expected_voxels

    # Judged against the size in the image even when a size was given: a wrong --diameter is
    # one of the causes the warning names.
    measured = resampling.diameter if resampling is not None and diameter == "auto" else None
    if resampling is not None and measured is None and resampling.target is not None:
        from ..imaging.sizing import estimate_size

        found = estimate if estimate is not None else estimate_size(
            image[image.shape[0] // 2] if per_slice else image,
            None if per_slice else _usable_voxel_size(voxel_size, image.ndim))
        measured = found.diameter if found is not None else None
    expected = expected_voxels(measured, image.ndim - lead,
                               _usable_voxel_size(voxel_size, image.ndim - lead),
                               int(image.shape[0]) if image.ndim - lead == 3 else None)
    resampled = tuple(net_image.shape) != source_shape
    spatial = tuple(net_image.shape[lead:])  # the channels of a multi-channel image come first
    plan = tile_plan(spatial[per_slice:], geometry, tile, mode)
    if mode == "blend":
        # Blended tiles overlap; chunks of one stride keep every chunk written by one task.
        chunk = (1,) * per_slice + tuple(plan.stride)
    else:
        chunk = (1,) * per_slice + tuple(plan.tile)
    grid = tuple(math.ceil(s / c) for s, c in zip(spatial, chunk))
    layout = _Layout(spatial, model.config.out_channels, chunk, grid, bool(model.config.foreground_head),
                     source_shape[lead:] if resampled else None, ngff,
                     tuple(voxel_size) if voxel_size and len(voxel_size) == spatial_ndim else None, unit,
                     np.dtype(image.dtype).newbyteorder("=").str, source_shape[0] if lead else 0)
    # Both halves checked themselves when they were made (SegmentationSettings, ClusterOptions).
    if per_slice and o.min_size is None and resampling is not None and resampling.diameter:
        # The 2D model's minimum size is per plane, but its objects are linked across z: a
        # nucleus spans as many planes as it is deep (bounded by the stack), so a speck of one
        # or two planes is not kept just because it beats one plane's minimum.
        from ..imaging.sizing import planes_spanned

        planes = planes_spanned(resampling.diameter, _usable_voxel_size(voxel_size, 3))
        depth = max(1, min(int(image.shape[0]), int(planes)))
        settings = settings.replace(min_size=settings.min_size * depth)
    if settings.min_size > math.prod(spatial):
        # Every object would be dropped: an empty result marked complete looks like "no nuclei".
        raise ShiftSegError(
            f"the minimum object size {settings.min_size:g} voxels is larger than the whole image "
            f"({math.prod(spatial)} voxels{' as the network sees it' if resampled else ''}): no "
            "object could be kept; give a smaller --min-size")
    cluster_args = o.clustering.args(settings)
    if o.clustering.connectivity > spatial_ndim:
        raise ShiftSegError(f"connectivity must be 1 to {spatial_ndim} for a {spatial_ndim}D image, "
                            f"got {o.clustering.connectivity}")

    check_resources(o.tile_resources, client)
    compute = runner(client, cancel)
    # One run per output at a time; everything below (attribute updates included) holds it.
    with OutputLock(out_path):
        recovered = _replace.recover_interrupted(out_path, (FORMAT,))
        if recovered:
            log.warning("shiftseg: %s", recovered)
        # Not cancellable (it creates nothing): an output exists as soon as a run has started.
        fingerprint = _image_fingerprint(image, runner(client, None))
        embed_args = _embedding_args(image, model, plan, mode, fingerprint)
        embed_args["resampled_to"] = list(net_image.shape) if resampled else None
        if per_slice:
            embed_args["per_slice"] = True
        embed_args["ngff"] = ngff
        target = out_path  # where this run writes; a staging sibling with overwrite
        group = _open_output(out_path, o.overwrite)
        created = group is None
        existed = out_path.exists()  # an empty folder made by the user stays on failure
        if group is None:
            if out_path.exists() and any(out_path.iterdir()):  # --overwrite: keep it until replaced
                target = _replace.staging_path(out_path)
                _replace.refuse_foreign(target, out_path, (FORMAT,))
                if os.path.lexists(target):
                    shutil.rmtree(target)  # an earlier, unfinished --overwrite run of ours
            attrs = {"format": FORMAT, "version": __version__, "embedding_args": embed_args,
                     "cluster_args": cluster_args, "model_name": model.name, "chunks": list(chunk),
                     # a spatial head's position scale: mean-shift of a large volume is blockwise
                     **({"positions": list(model.config.positions)} if model.config.positions else {}),
                     "image_slabs": {k: fingerprint[k] for k in ("planes", "slabs")},
                     **({"voxel_size": list(voxel_size)} if voxel_size and len(voxel_size) == spatial_ndim
                        else {}),
                     # where the input was read from: the napari reader shows it next to the labels
                     **({"input": source_file} if source_file else {}),
                     # e.g. "tile 100 changed to 104 (...)": the CLI and the widget say it
                     **({"tile_note": plan.message} if plan.message else {}),
                     # what the run decided about voxels and object size, in words
                     **({"size_note": size_note} if size_note else {}),
                     # the object diameter (px) the run resampled for, when it measured one
                     **({"object_diameter": resampling.diameter}
                        if resampling is not None and resampling.diameter else {}),
                     **({"expected_object_voxels": expected} if expected else {})}
            group = _create_output(target, layout, attrs)
        else:
            _check_resume(group, embed_args, out_path, fingerprint)
            stored = dict(group.attrs[ATTRS])
            if group.attrs.get("complete") and stored.get("cluster_args") == cluster_args:
                if progress is not None:
                    progress(stored.get("tiles", 0), stored.get("tiles", 0))
                return group  # finished earlier with these very arguments: nothing to do
            # A new clustering (or a re-run after completion) must not look complete half way.
            if "complete" in group.attrs:
                del group.attrs["complete"]
            _set_attrs(group, cluster_args=cluster_args)

        try:
            run = _Run(net_image, model, plan, layout, device, bool(per_slice), bool(lead),
                       o.tile_resources, settings, o.clustering, image)
            with tile_threads(client):
                return _run_tiles(run, group, target, out_path, compute, client, progress, stage)
        except BaseException:
            # A run that fails (or is cancelled) before its first tile has nothing worth
            # resuming: remove what it created, so the retry (another tile, another device)
            # is not refused as a "different" run. With tiles written, keep them for --resume.
            if created and target.exists() and not _done_flags(group["done"]).any():
                _remove_created(target, out_path, existed)
            raise


def _usable_voxel_size(voxel_size, ndim: int):
    """The voxel size when it is ``ndim`` positive finite numbers, else None (not used)."""
    if voxel_size is None:
        return None
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        return None
    ok = len(values) == ndim and all(math.isfinite(v) and v > 0 for v in values)
    return values if ok else None


def _check_voxel_size(voxel_size, ndim: int) -> tuple[float, ...]:
    if voxel_size is None:
        raise ShiftSegError("isotropic resampling needs the voxel size: the image file records "
                            "none; give it (e.g. --voxel-size 2,0.5,0.5)")
    values = _usable_voxel_size(voxel_size, ndim)
    if values is None:
        raise ShiftSegError(f"the voxel size must be {ndim} positive numbers (one per axis), got "
                            f"{tuple(voxel_size)}")
    return values


def _remove_created(target: Path, out_path: Path, existed: bool) -> None:
    """Delete an output this run created; an empty folder the user made stays, empty."""
    if target == out_path and existed:
        for child in out_path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(target, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the tile loop needs of a run: the image the network reads (resampled or not), the
    model and its plan, the output's layout, where tiles run, how to cluster and label, and the
    input as read (``source``: what the output stores as its image).
    ``channels_first``: ``image`` holds a multi-channel network's input channels on axis 0."""

    image: Any
    model: Any
    plan: TilePlan
    layout: _Layout
    device: str
    per_slice: bool
    channels_first: bool
    tile_resources: dict | None
    settings: SegmentationSettings
    clustering: ClusterOptions
    source: Any = None


def _run_tiles(run: _Run, group, target, out_path, compute, client, progress, stage):
    """Predict and write the missing tiles, then cluster and label; returns the output group."""
    from contextlib import nullcontext

    import dask

    from .predict import predict_embeddings

    image, plan, layout = run.image, run.plan, run.layout
    channels, chunk, foreground, channels_first = (layout.channels, layout.chunk, layout.foreground,
                                                   run.channels_first)
    done = group["done"]
    flags = _done_flags(done)
    todo = [index for index in np.ndindex(layout.grid) if not flags[index]]
    total, before = len(flags.ravel()), int(flags.sum())
    if stage:
        stage("tiles")
    if progress is not None:
        progress(before, total)
    if todo:
        # Everything a tile needs (reading its window, the network, writing it) carries the
        # tile resources, e.g. {"GPU": 1}: a cluster runs it on workers that declare them, and
        # the clustering below on any worker.
        annotate = dask.annotate(resources=run.tile_resources) if run.tile_resources else nullcontext()
        with annotate:
            # The plan segment_to_zarr made (and stored): predict tiles exactly as recorded.
            embeddings = predict_embeddings(image, run.model, plan=plan, device=run.device,
                                            per_slice=run.per_slice,
                                            channel_axis=0 if channels_first else None)
            spatial = tuple(image.shape[int(channels_first):])
            if tuple(embeddings.shape) != (channels, *spatial):
                raise RuntimeError(f"prediction has shape {embeddings.shape}, expected {(channels, *spatial)}")
            embeddings = embeddings.rechunk(((channels,),) + tuple(
                tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(spatial, chunk)))
            blocks = embeddings.to_delayed(optimize_graph=False)
            # Tiles go to the scheduler in batches (in raster order): its bookkeeping and the input
            # chunks it holds for neighbouring windows then stay bounded however many tiles remain.
            size = _batch_size(client)
            for start in range(0, len(todo), size):
                batch = todo[start:start + size]
                tasks = [_tile_task(blocks[(0,) + index], group, foreground, index, chunk, spatial)
                         for index in batch]

                def tiles_done(count, of, offset=before + start, n=len(batch)):  # noqa: B008 - bound per batch
                    if progress is not None and of:
                        progress(offset + round(count * n / of), total)

                compute(*tasks, progress=tiles_done)
        missing = int((~_done_flags(done)).sum())
        if missing:
            raise RuntimeError(f"{missing} tiles were not written")
    _set_attrs(group, tiles=total)
    _store_input(group, run.source, compute, stage)
    _label(group, run.settings, run.clustering, foreground, compute, stage)
    if target != out_path:
        import zarr

        _swap_in(target, out_path)
        group = zarr.open_group(out_path, mode="r+")
    return group


def _batch_size(client) -> int:
    """Tiles per scheduler call: enough to keep every worker thread busy."""
    threads = sum(client.nthreads().values()) if client is not None else 1
    return max(_TILE_BATCH, 4 * threads)


def _tile_task(block, group, foreground: bool, index, chunk, shape):
    import dask

    region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunk, shape))
    fg = group["foreground"] if foreground else None
    return dask.delayed(_write_tile, pure=False)(block, group["embeddings"], fg, group["done"],
                                                 region, index)


def _label(group, settings: SegmentationSettings, clustering: ClusterOptions, foreground: bool,
           compute, stage) -> None:
    """Cluster the stored embeddings, write the labels, then mark the group complete."""
    import dask.array as da

    from .instances import cluster_embeddings, write_instances

    embeddings = da.from_zarr(group["embeddings"])
    if stage:
        stage("clustering")
    # Outputs written before blockwise mean-shift record no positions: the global path, as then.
    positions = dict(group.attrs[ATTRS]).get("positions")
    found = cluster_embeddings(embeddings, settings.bandwidth, settings.fg_threshold, foreground,
                               clustering, compute=compute,
                               position_scale=tuple(positions) if positions else None)
    if stage:
        stage("labels")
    resampled = "labels_resampled" in group
    out = group["labels_resampled" if resampled else LABELS]
    count = write_instances(embeddings, found, out, settings.min_size, clustering.connectivity,
                            compute=compute, merge_distance=settings.merge_distance or None,
                            absorb_small=settings.absorb_small, fill_holes=settings.fill_holes)
    if resampled:
        # Nearest-centre read-back onto the image's grid, chunk by chunk (rescale.py).
        from ..imaging.rescale import resize_labels

        labels = group[LABELS]
        back = resize_labels(da.from_zarr(out), labels.shape).rechunk(labels.chunks)
        compute(da.store(back, labels, lock=False, compute=False))
    warning = ""
    expected = dict(group.attrs[ATTRS]).get("expected_object_voxels")
    if count:
        from .sanity import label_statistics, result_warning

        median, foreground_share = label_statistics(da.from_zarr(group[LABELS]), count, compute)
        warning = result_warning(count, median, foreground_share, expected)
    _set_attrs(group, clustering=found.to_dict(), n_objects=count, warning=warning)
    group.attrs["complete"] = True


def stored_plan(out_path, geometry) -> TilePlan:
    """The tile plan a finished or interrupted run used, from what it recorded (its tile is
    already n·f^l in exact mode, so nothing is snapped again)."""
    import zarr

    group: Any = zarr.open_group(str(out_path), mode="r")  # zarr's attribute types are JSON unions
    args = dict(group.attrs[ATTRS])["embedding_args"]
    spatial = tuple(group["embeddings"].shape[1:])
    return tile_plan(spatial[len(spatial) - geometry.ndim:], geometry, tuple(args["tile"]), args["mode"])


def recluster(out_path, settings=None, clustering: ClusterOptions | None = None, *,
              cancel: threading.Event | None = None, client=None,
              stage: Callable[[str], None] | None = None, **overrides):
    """Label the stored embeddings of a finished :func:`segment_to_zarr` output again.

    No network pass: mean-shift and labelling read ``embeddings`` back from the zarr group, and
    ``labels`` (and the clustering attributes) are replaced.

    ``settings`` (a :class:`~napari_shiftseg.network.settings.SegmentationSettings`, default its
    defaults) and ``clustering`` (:class:`~napari_shiftseg.inference.segment_options.ClusterOptions`) say
    how; ``overrides`` change fields of either by name (``bandwidth=1.5``, ``seed=2``).

    Returns
    -------
    zarr.Group
    """
    import zarr

    out_path = Path(out_path).expanduser().resolve()
    if not out_path.is_dir():
        raise ShiftSegError(f"{out_path} does not exist")

    settings, clustering = settings_and_clustering(settings, clustering, overrides, "recluster")
    cluster_args = clustering.args(settings)
    with OutputLock(out_path):
        group = _open_output(out_path, overwrite=False)
        if group is None:
            raise ShiftSegError(f"{out_path} holds no segmentation to cluster again")
        if not _done_flags(group["done"]).all():
            raise ShiftSegError(f"the embeddings in {out_path} are incomplete; run the segmentation "
                                "again with its first settings to finish them")
        if IMAGE in group and dict(group.attrs[ATTRS]).get("input_stored") is not True:
            # Labelled now, it would look complete without its input (then never copied).
            raise ShiftSegError(f"the copy of the input in {out_path} is incomplete; run the "
                                "segmentation again with its first settings to finish it")
        if "complete" in group.attrs:
            del group.attrs["complete"]
        _set_attrs(group, cluster_args=cluster_args)
        _label(group, settings, clustering, "foreground" in group, runner(client, cancel), stage)
    return zarr.open_group(out_path, mode="r+")
