"""Reading images without loading them: TIFF, zarr (v2/v3, OME-Zarr) and .npy.

:func:`read_image` returns something numpy-like that is read on demand: a memory map where the
file allows it (uncompressed TIFF, .npy), otherwise a dask array over a zarr store (zarr,
OME-Zarr, compressed or tiled TIFF through tifffile's zarr store). Tiled prediction then reads
only the tiles it needs. Every failure a user can cause (missing file, unknown extension,
corrupt file, a zarr group with no image in it) raises :class:`ShiftSegError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..util._errors import ShiftSegError

__all__ = ["EXTENSIONS", "TimeSeries", "read_image", "read_series", "read_spatial", "image_info",
           "time_points", "write_zarr"]

EXTENSIONS = (".tif", ".tiff", ".zarr", ".npy")
# Below this many bytes a compressed TIFF is simply decoded into memory.
_SMALL_TIFF = 256 * 2**20
# OME-NGFF axis types that are not spatial; size-1 axes of these types are dropped.
_NON_SPATIAL = ("time", "channel")


def _zarr_root(path: Path) -> Path | None:
    """The ``*.zarr`` directory that ``path`` is or lies in (``a.zarr/0`` is an array in a.zarr)."""
    for candidate in (path, *path.parents):
        if candidate.suffix.lower() == ".zarr":
            return candidate
    return None


def read_image(path):
    """Open an image file lazily.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (first series), ``.npy``, or a ``.zarr`` directory holding an array,
        an OME-Zarr multiscale group (the highest resolution is read, size-1 time/channel axes
        are dropped), or a group with exactly one array. ``image.zarr/name`` opens the array
        ``name`` inside ``image.zarr``.

    Returns
    -------
    numpy.memmap, numpy.ndarray or dask.array.Array
        Memory-mapped where possible, a dask array over the file's chunks otherwise; small
        compressed TIFFs are decoded into memory.

    Raises
    ------
    ShiftSegError
        If the file does not exist, has an unknown extension, or cannot be read.
    """
    path = Path(path).expanduser()
    root = _zarr_root(path)
    if root is not None:
        if not root.exists():
            raise ShiftSegError(f"image {path} does not exist")
        return _read_zarr(root, path.relative_to(root).as_posix() if path != root else "")
    if not path.exists():
        raise ShiftSegError(f"image {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    if suffix == ".npy":
        return _read_npy(path)
    raise ShiftSegError(
        f"cannot read {path.name}: unknown file type {suffix or '(no extension)'!r}; "
        f"supported: {', '.join(EXTENSIONS)} (OME-Zarr too)"
    )


def image_info(path) -> dict:
    """What a file says about its axes and voxel size, without reading the voxels.

    Returns ``{"axes": str | None, "voxel_size": tuple | None, "unit": str | None}``. ``axes``
    uses tifffile's letters (``T`` time, ``C`` channel, ``S`` RGB samples, ``Z``, ``Y``, ``X``),
    from the TIFF series or the OME-Zarr ``axes``; ``voxel_size`` is one number per spatial axis
    (ImageJ ``spacing`` + resolution tags, OME-TIFF physical sizes, OME-Zarr scale), None when
    the file does not say.
    """
    path = Path(path).expanduser()
    root = _zarr_root(path)
    try:
        if root is not None:
            return _zarr_info(root, path)
        if path.suffix.lower() in (".tif", ".tiff") and path.exists():
            return _tiff_info(path)
    except ShiftSegError:
        raise
    except Exception:  # noqa: BLE001 - metadata is optional: a file read elsewhere, or not at all
        pass
    return {"axes": None, "voxel_size": None, "unit": None}


def _tiff_info(path: Path) -> dict:
    import re

    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.upper().replace("Q", "").replace("I", "Z")
        spatial = [a for a in axes if a in "ZYX"]
        size: dict[str, float | None] = {a: None for a in spatial}
        unit = None
        page = tif.pages[0]
        for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
            value = page.tags.get(tag)
            if value is not None and axis in size:
                num, den = value.value
                if num and den and num != den:  # 1/1 is "no calibration"
                    size[axis] = den / num
        ij = tif.imagej_metadata or {}
        if "Z" in size and ij.get("spacing"):
            size["Z"] = float(ij["spacing"])
        unit = ij.get("unit") or None
        if tif.ome_metadata:
            for axis in spatial:
                found = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', tif.ome_metadata)
                if found:
                    size[axis] = float(found.group(1))
            found = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            unit = found.group(1) if found else (unit or "µm")
    known = [size[a] for a in spatial]
    voxel = None
    if any(v is not None for v in known):
        # An uncalibrated axis next to calibrated ones: take the in-plane value (Z stays 1).
        plane = size.get("X") or size.get("Y") or 1.0
        voxel = tuple(float(v if v is not None else (plane if a in "XY" else 1.0))
                      for a, v in zip(spatial, known))
    return {"axes": axes, "voxel_size": voxel, "unit": unit}


def _zarr_info(root: Path, path: Path) -> dict:
    import zarr

    node = zarr.open(root, mode="r", path=path.relative_to(root).as_posix()) if path != root \
        else zarr.open(root, mode="r")
    if isinstance(node, zarr.Array):
        return {"axes": None, "voxel_size": None, "unit": None}
    multiscales = _multiscales(node.attrs)
    if not multiscales:
        return {"axes": None, "voxel_size": None, "unit": None}
    meta = multiscales[0]
    axes = meta.get("axes") or []
    letters, units = "", []
    for axis in axes:
        kind = axis.get("type") if isinstance(axis, dict) else None
        name = (axis.get("name") if isinstance(axis, dict) else str(axis)) or "?"
        kind_letters: dict[str | None, str] = {"time": "T", "channel": "C"}
        letter = kind_letters.get(kind) or name[:1].upper()
        letters += letter
        if isinstance(axis, dict) and axis.get("unit") and letter in "ZYX":
            units.append(axis["unit"])
    datasets = meta.get("datasets") or []
    best = min(range(len(datasets)), key=lambda i: (_scale(datasets[i]), i)) if datasets else None
    scale = None
    if best is not None:
        for transform in datasets[best].get("coordinateTransformations") or ():
            if transform.get("type") == "scale":
                scale = [float(v) for v in transform.get("scale") or ()]
    voxel = None
    if scale and len(scale) == len(letters):
        voxel = tuple(v for v, a in zip(scale, letters) if a in "ZYX")
    return {"axes": letters or None, "voxel_size": voxel, "unit": units[0] if units else None}


def read_spatial(path, channel: int | Sequence[int] | None = None):
    """:func:`read_image`, checked to be a 2D/3D single-channel image (one channel picked).

    RGB TIFFs and multi-channel files (a ``C``/``S`` axis, or an OME ``channel`` axis, of size
    > 1) need ``channel``; a time axis of size > 1 is refused here: read such a file with
    :func:`read_series` (one time point at a time), or segment it with
    :func:`napari_shiftseg.inference.series.segment_series` (``shiftseg segment`` does). A list of
    channels gives those channels stacked on a first axis, (C, *spatial), for a
    multi-channel network.
    """
    image, axes = _picked(path, channel)
    if axes and "T" in axes and image.shape[axes.index("T")] > 1:
        name = Path(path).name
        raise ShiftSegError(f"{name} is a time series (axes {axes}, shape {tuple(image.shape)}); "
                            "`shiftseg segment` segments every time point (ids numbered on), "
                            "napari_shiftseg.inference.series.segment_series in Python; io.read_series "
                            "reads one time point at a time")
    return image


class TimeSeries:
    """A time series read lazily, one time point at a time (see :func:`read_series`).

    ``data`` has the time axis first, (T, *spatial), or (T, C, *spatial) for a list of
    channels (``axes``: its letters, ``T`` first; None when unknown). ``frame(t)`` is one time
    point as :func:`read_spatial` would give it for a file of that one point (a memory map or
    dask array where the file allows it: nothing is read until it is used). ``voxel_size`` is
    one number per spatial axis (None when the file records none), ``unit`` its unit.
    """

    def __init__(self, data, axes: str | None, voxel_size=None, unit: str | None = None):
        self.data, self.axes = data, axes
        self.voxel_size = tuple(voxel_size) if voxel_size else None
        self.unit = unit

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def frame(self, t: int):
        if not 0 <= t < len(self):
            raise IndexError(f"time point {t} of {len(self)}")
        return self.data[t]


def read_series(path, channel: int | Sequence[int] | None = None) -> TimeSeries:
    """A file with a time axis (metadata axes ``T``: an ImageJ hyperstack ``TZYX``, an OME-Zarr
    ``time`` axis, ...) as a :class:`TimeSeries`, time first; channels are picked as in
    :func:`read_spatial`. A file whose metadata names no time axis is refused.
    """
    image, axes = _picked(path, channel)
    name = Path(path).name
    if not axes or "T" not in axes:
        raise ShiftSegError(f"{name} has no time axis that its metadata names (axes "
                            f"{axes or 'unknown'}, shape {tuple(image.shape)})")
    axis = axes.index("T")
    if axis:
        if hasattr(image, "dask"):
            import dask.array as da

            image = da.moveaxis(image, axis, 0)
        else:
            image = np.moveaxis(image, axis, 0)  # a view: a memory map stays one
        axes = "T" + axes[:axis] + axes[axis + 1:]
    info = image_info(path)
    spatial = sum(a in "ZYX" for a in axes)
    voxel = info["voxel_size"] if info["voxel_size"] and len(info["voxel_size"]) == spatial else None
    return TimeSeries(image, axes, voxel, info["unit"])


def time_points(path) -> int:
    """How many time points ``path`` holds along a time axis its metadata names (1 when it
    names none); reads the metadata only."""
    axes = image_info(path)["axes"]
    if not axes or "T" not in axes:
        return 1
    image = read_image(path)
    return int(image.shape[axes.index("T")]) if len(axes) == image.ndim else 1


def _picked(path, channel):
    """The image of ``path`` with its channel(s) picked, and its axes letters (tifffile's, no
    channel axis left; ``C`` first for a list of channels; None when the metadata names none).
    """
    if channel is not None and not isinstance(channel, (int, np.integer)):
        return _read_channels(path, [int(c) for c in channel])
    image = read_image(path)
    info = image_info(path)
    axes = info["axes"]
    name = Path(path).name
    if axes is None or len(axes) != image.ndim:
        if channel is not None:
            raise ShiftSegError(f"{name} has no channel axis that its metadata names (shape "
                                f"{tuple(image.shape)}); leave out --channel")
        return image, None
    channel_axes = [i for i, a in enumerate(axes) if a in "CS"]
    if channel_axes:
        axis = channel_axes[0]
        n = image.shape[axis]
        if channel is None:
            what = "an RGB image" if axes[axis] == "S" else f"a {n}-channel image"
            raise ShiftSegError(f"{name} is {what} (axes {axes}, shape {tuple(image.shape)}); "
                                f"shiftseg models take one channel: choose one with --channel "
                                f"0..{n - 1}")
        if not 0 <= channel < n:
            raise ShiftSegError(f"--channel {channel} does not exist: {name} has channels 0..{n - 1}")
        image = image[(slice(None),) * axis + (channel,)]
        axes = axes[:axis] + axes[axis + 1:]
    elif channel is not None:
        raise ShiftSegError(f"{name} has one channel (axes {axes}); leave out --channel")
    return image, axes


def _read_channels(path, picks: list[int]):
    """The channels ``picks`` of a file with a channel axis, stacked first (lazily for dask),
    and the axes letters of the result (``C`` first)."""
    image = read_image(path)
    axes = image_info(path)["axes"]
    name = Path(path).name
    if not axes or len(axes) != image.ndim or not any(a in "CS" for a in axes):
        raise ShiftSegError(f"{name} has no channel axis that its metadata names (shape "
                            f"{tuple(image.shape)}); a multi-channel model needs one")
    axis = next(i for i, a in enumerate(axes) if a in "CS")
    n = image.shape[axis]
    bad = [c for c in picks if not 0 <= c < n]
    if bad:
        raise ShiftSegError(f"--channels {','.join(map(str, picks))}: {name} has channels 0..{n - 1}")
    rest = "C" + axes[:axis] + axes[axis + 1:]
    if "T" in axes and not hasattr(image, "dask"):
        import dask.array as da

        # A time series: picked lazily, one time point per chunk (never the whole series).
        image = da.from_array(image, chunks=tuple(1 if a == "T" else -1 for a in axes),
                              asarray=True, name=False)
    if hasattr(image, "dask"):
        import dask.array as da

        return da.moveaxis(image[(slice(None),) * axis + (picks,)], axis, 0), rest
    return np.moveaxis(np.asarray(image).take(picks, axis=axis), axis, 0), rest


def _read_npy(path: Path):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ShiftSegError(f"{path.name} is not a readable .npy file ({_short(err)})") from None
    if not isinstance(array, np.ndarray):
        raise ShiftSegError(f"{path.name} holds several arrays; save one image per .npy file")
    return array


def _read_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ShiftSegError(f"{path.name} contains no image")
            series = tif.series[0]
            memmappable = series.dataoffset is not None
            nbytes = series.size * series.dtype.itemsize
        if memmappable:
            return tifffile.memmap(path, mode="r", series=0)
        if nbytes <= _SMALL_TIFF:
            return tifffile.imread(path, series=0)
        import dask.array as da

        lazy = _LazyTiff(path)
        return da.from_array(lazy, chunks=lazy.chunks, asarray=True)
    except (ShiftSegError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - hostile bytes raise struct, zlib, codec errors, ...
        raise ShiftSegError(f"{path.name} is not a readable TIFF file ({_short(err)})") from None


class _LazyTiff:
    """A compressed or tiled TIFF read region by region through tifffile's zarr view.

    The file is opened for each read and closed again, so no handle stays open and the object
    pickles as just its path (dask.distributed workers reopen the file themselves).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with self._open() as array:
            self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks
        self.ndim = len(self.shape)

    def _open(self):
        import contextlib

        import tifffile
        import zarr

        @contextlib.contextmanager
        def opened():
            with tifffile.TiffFile(self.path) as tif:
                store = tif.aszarr(series=0, level=0)
                try:
                    yield zarr.open_array(store, mode="r")
                finally:
                    store.close()

        return opened()

    def __getitem__(self, key):
        try:
            with self._open() as array:
                return array[key]
        except (ShiftSegError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - a damaged file fails only when its data is read
            raise ShiftSegError(f"{self.path.name} could not be decoded; the file is corrupt or "
                                f"truncated ({_short(err)})") from None


def _read_zarr(root: Path, inner: str):
    import dask.array as da
    import zarr

    try:
        node = zarr.open(root, mode="r", path=inner) if inner else zarr.open(root, mode="r")
    except Exception as err:  # zarr raises many types for broken stores
        where = f"{root.name}/{inner}" if inner else root.name
        raise ShiftSegError(f"{where} is not a readable zarr array or group ({_short(err)})") from None
    name = f"{root.name}/{inner}" if inner else root.name
    if isinstance(node, zarr.Array):
        return da.from_zarr(node)
    multiscales = _multiscales(node.attrs)
    if multiscales is not None:
        return _read_ome(node, multiscales, name)
    arrays = sorted(key for key, _ in node.arrays())
    if len(arrays) == 1:
        return da.from_zarr(node[arrays[0]])
    if not arrays:
        raise ShiftSegError(f"the zarr group {name} contains no array")
    raise ShiftSegError(
        f"the zarr group {name} contains several arrays ({', '.join(arrays)}); "
        f"name one, e.g. {name}/{arrays[0]}"
    )


def _multiscales(attrs):
    """OME-NGFF multiscales metadata (v0.4 at the top level, v0.5 under 'ome'), or None."""
    attrs = dict(attrs)
    value = attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales")
    return value or None


def _scale(dataset) -> float:
    """Voxel volume of an OME dataset from its scale transform (1 if it has none)."""
    for transform in dataset.get("coordinateTransformations") or ():
        if transform.get("type") == "scale":
            return float(np.prod(transform.get("scale") or [1]))
    return 1.0


def _read_ome(group, multiscales, name: str):
    import dask.array as da

    try:
        meta = multiscales[0]
        datasets = meta["datasets"]
        # The spec orders datasets from high to low resolution; the scales say it explicitly.
        best = min(range(len(datasets)), key=lambda i: (_scale(datasets[i]), i))
        array = group[datasets[best]["path"]]
    except (KeyError, IndexError, TypeError) as err:
        raise ShiftSegError(f"{name} has broken OME-Zarr multiscales metadata ({_short(err)})") from None
    image = da.from_zarr(array)
    axes = meta.get("axes") or []
    if len(axes) == image.ndim:
        drop = tuple(i for i, axis in enumerate(axes)
                     if isinstance(axis, dict) and axis.get("type") in _NON_SPATIAL and image.shape[i] == 1)
        if drop:
            image = image.squeeze(axis=drop)
    return image


def write_zarr(array, path, name: str = "image", chunks=None, overwrite: bool = False):
    """Write a numpy or dask array to ``path`` (a zarr group) as ``name``; returns the zarr array."""
    import dask.array as da
    import zarr

    group = zarr.open_group(path, mode="a")
    if name in group and not overwrite:
        raise ShiftSegError(f"{path} already holds {name!r}; choose another name or overwrite")
    chunks = chunks or (getattr(array, "chunksize", None) or array.shape)
    out = group.create_array(name, shape=array.shape, chunks=tuple(chunks), dtype=array.dtype,
                             overwrite=True)
    if isinstance(array, da.Array):
        # dask types store()'s targets as numpy ArrayLike; any object with __setitem__ works
        da.store(array.rechunk(tuple(chunks)), out, lock=False)  # type: ignore[arg-type]
    else:
        out[...] = np.asarray(array)
    return out


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]
