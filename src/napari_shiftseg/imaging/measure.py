"""Per-instance measurements: size in physical units, centroid, bounding box, intensities,
embedding mean; computed block by block, so volumes larger than memory are measured too.

Each block of the labels (with the matching blocks of the image and the embeddings) gives, for
every object it holds, partial sums: voxel count, coordinate sums, bounding-box corners,
intensity sums and maxima, embedding sums. Partials of the same object from different blocks
combine exactly (sums add, corners take min / max), so the table does not depend on the
chunking. On numpy input the whole array is one block.

The table is a dict of equal-length numpy columns (what napari's ``Labels.features`` takes):
``index`` is the label id, so napari shows the row of the object under the cursor.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ..util._errors import ShiftSegError

__all__ = ["measure", "write_table", "AXES"]

#: Axis names of 2D / 3D spatial arrays in column names.
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def _check(labels, image, spacing, embeddings, channel_axis):
    ndim = labels.ndim
    if ndim not in (2, 3):
        raise ShiftSegError(f"labels must be 2D or 3D, got shape {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShiftSegError(f"labels must hold whole numbers, got data type {labels.dtype}")
    if spacing is None:
        spacing = (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ShiftSegError(f"the voxel size must be {ndim} positive numbers, got {spacing}")
    if image is not None:
        if channel_axis is None:
            image = image[None]
        else:
            if not -image.ndim <= channel_axis < image.ndim:
                raise ShiftSegError(f"channel_axis {channel_axis} is not an axis of the image "
                                    f"(shape {tuple(image.shape)})")
            image = da.moveaxis(image, channel_axis, 0) if isinstance(image, da.Array) \
                else np.moveaxis(image, channel_axis, 0)
        if tuple(image.shape[1:]) != tuple(labels.shape):
            raise ShiftSegError(f"the image (spatial shape {tuple(image.shape[1:])}) and the labels "
                                f"(shape {tuple(labels.shape)}) must have the same shape")
    if embeddings is not None and tuple(embeddings.shape[1:]) != tuple(labels.shape):
        raise ShiftSegError(f"the embeddings (spatial shape {tuple(embeddings.shape[1:])}) and the "
                            f"labels (shape {tuple(labels.shape)}) must have the same shape")
    return image, spacing


def _block_stats(labels, image, embeddings, origin) -> dict:
    """Partial statistics of every object in one block (``origin``: its first voxel)."""
    labels = np.asarray(labels)
    mask = labels > 0
    ids, inverse = np.unique(labels[mask], return_inverse=True)
    n = len(ids)
    out = {"ids": ids, "count": np.bincount(inverse, minlength=n).astype(np.float64)}
    coords = np.nonzero(mask)
    out["coord_sum"] = np.stack([np.bincount(inverse, c + o, minlength=n) for c, o in zip(coords, origin)])
    lo = np.full((labels.ndim, n), np.iinfo(np.int64).max, np.int64)
    hi = np.full((labels.ndim, n), -1, np.int64)
    for axis, (c, o) in enumerate(zip(coords, origin)):
        np.minimum.at(lo[axis], inverse, c + o)
        np.maximum.at(hi[axis], inverse, c + o)
    out["lo"], out["hi"] = lo, hi
    for name, values in (("intensity", image), ("embedding", embeddings)):
        if values is None:
            continue
        values = np.asarray(values, dtype=np.float64)[:, mask]
        out[name + "_sum"] = np.stack([np.bincount(inverse, v, minlength=n) for v in values])
        if name == "intensity":
            top = np.full((values.shape[0], n), -np.inf)
            for channel, v in enumerate(values):
                np.maximum.at(top[channel], inverse, v)
            out["intensity_max"] = top
    return out


def _combine(parts: list[dict]) -> dict:
    """Partials of all blocks -> one entry per object (sorted by id)."""
    ids = np.unique(np.concatenate([p["ids"] for p in parts])) if parts else np.zeros(0, np.int64)
    n = len(ids)
    total: dict = {"ids": ids}
    for part in parts:
        where = np.searchsorted(ids, part["ids"])
        for key, value in part.items():
            if key == "ids":
                continue
            if key not in total:
                shape = value.shape[:-1] + (n,)
                fill = {"lo": np.iinfo(np.int64).max, "hi": -1, "intensity_max": -np.inf}.get(key, 0)
                total[key] = np.full(shape, fill, dtype=value.dtype)
            target = total[key]
            if key == "lo":
                target[..., where] = np.minimum(target[..., where], value)
            elif key in ("hi", "intensity_max"):
                target[..., where] = np.maximum(target[..., where], value)
            else:
                target[..., where] += value
    return total


def _blocks(labels, image, embeddings):
    """(labels block, image block, embeddings block, origin) per block of ``labels``."""
    if not isinstance(labels, da.Array):
        yield labels, image, embeddings, (0,) * labels.ndim
        return
    chunks = labels.chunks
    if image is not None:
        image = da.asarray(image).rechunk(((image.shape[0],),) + chunks)
    if embeddings is not None:
        embeddings = da.asarray(embeddings).rechunk(((embeddings.shape[0],),) + chunks)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in chunks]
    lab_blocks = labels.to_delayed()
    img_blocks = image.to_delayed() if image is not None else None
    emb_blocks = embeddings.to_delayed() if embeddings is not None else None
    for index in np.ndindex(lab_blocks.shape):
        yield (lab_blocks[index],
               None if img_blocks is None else img_blocks[(0,) + index],
               None if emb_blocks is None else emb_blocks[(0,) + index],
               tuple(int(s[i]) for s, i in zip(starts, index)))


def measure(labels, image=None, spacing=None, embeddings=None, channel_axis: int | None = None,
            compute=None) -> dict[str, np.ndarray]:
    """Per-instance features of ``labels`` (numpy or dask; 0 = background).

    Parameters
    ----------
    labels : array (2D or 3D, integers)
    image : array, optional
        Intensities, same spatial shape; several channels with ``channel_axis``.
    spacing : sequence of float, optional
        Voxel size per axis (e.g. µm); size and centroid columns in those units are added.
    embeddings : array (E, *spatial), optional
        Embeddings (foreground logit excluded by the caller); adds the mean embedding.
    compute : callable, optional
        ``compute(*delayed)``; default :func:`dask.compute` (threads).

    Returns
    -------
    dict of str -> numpy array
        ``index`` (label id), ``voxels``, ``size`` (area or volume in ``spacing`` units),
        ``centroid_<axis>`` (pixels), ``bbox_<axis>_start``/``_stop`` (pixels, stop exclusive),
        ``mean_intensity`` / ``max_intensity`` (``_c<k>`` per channel with several) and
        ``embedding_mean_<k>``.
    """
    image, spacing = _check(labels, image, spacing, embeddings, channel_axis)
    parts = [dask.delayed(_block_stats)(*block) if isinstance(labels, da.Array) else _block_stats(*block)
             for block in _blocks(labels, image, embeddings)]
    if isinstance(labels, da.Array):
        parts = list((compute or (lambda *t: dask.compute(*t)))(*parts))
    total = _combine(parts)
    axes = AXES[labels.ndim]
    count = total.get("count", np.zeros(0))
    table = {"index": total["ids"].astype(np.int64), "voxels": count.astype(np.int64),
             "size": count * float(np.prod(spacing))}
    if not len(table["index"]):  # no objects: the same columns, empty
        d = labels.ndim
        total.update(count=np.zeros(0), coord_sum=np.zeros((d, 0)), lo=np.zeros((d, 0), np.int64),
                     hi=np.zeros((d, 0), np.int64))
        channels = {"intensity": 0 if image is None else image.shape[0],
                    "embedding": 0 if embeddings is None else embeddings.shape[0]}
        for name, n in channels.items():
            if n:
                total[name + "_sum"] = np.zeros((n, 0))
                if name == "intensity":
                    total["intensity_max"] = np.zeros((n, 0))
        count = total["count"]
    for a, axis in enumerate(axes):
        table[f"centroid_{axis}"] = total["coord_sum"][a] / count
    for a, axis in enumerate(axes):
        table[f"bbox_{axis}_start"] = total["lo"][a]
        table[f"bbox_{axis}_stop"] = total["hi"][a] + 1
    if "intensity_sum" in total:
        several = total["intensity_sum"].shape[0] > 1
        for c in range(total["intensity_sum"].shape[0]):
            suffix = f"_c{c}" if several else ""
            table[f"mean_intensity{suffix}"] = total["intensity_sum"][c] / count
            table[f"max_intensity{suffix}"] = total["intensity_max"][c]
    if "embedding_sum" in total:
        for k in range(total["embedding_sum"].shape[0]):
            table[f"embedding_mean_{k}"] = total["embedding_sum"][k] / count
    return table


def check_table_path(path, overwrite: bool = False, protect=()) -> Path:
    """Refuse a table path that would lose a file: an existing file unless ``overwrite``, a
    symlink (its target could be anything), a folder, or any of ``protect`` (the input image,
    the model). Called before a run starts, so nothing is computed for nothing."""
    path = Path(path).expanduser()
    if path.is_symlink():
        raise ShiftSegError(f"the table path {path} is a symbolic link; give a plain file name")
    if path.exists():
        if path.is_dir():
            raise ShiftSegError(f"the table path {path} is a folder; give a .csv file name")
        resolved = path.resolve()
        if any(Path(p).expanduser().resolve() == resolved for p in protect if p is not None):
            raise ShiftSegError(f"the table path {path} is an input of this run; give another file name")
        if not overwrite:
            raise ShiftSegError(f"{path} exists; give another table path, or --overwrite to replace it")
    return path


def write_table(table: dict, path) -> Path:
    """Write a :func:`measure` table as CSV (one row per object, a header line), through a
    temporary file renamed into place: a planted symlink is replaced, never followed, and a
    failed write leaves the old file."""
    import os
    import tempfile

    path = Path(path)
    names = list(table)
    rows = zip(*(table[name].tolist() for name in names))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
