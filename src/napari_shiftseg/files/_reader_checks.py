"""Checks that make opening a ``shiftseg segment`` output (``OUT.zarr``) in napari safe.

An output folder is data from anywhere (a colleague, a download, a shared disk), so the reader
trusts nothing in it: before zarr or dask touch the folder, and before a single chunk is read,

- the folder holds only plain files and folders (a symbolic link to ``/dev/zero``, say, a FIFO
  or a device would make a read endless or block it) and at most :data:`MAX_STORE_ENTRIES`;
- its metadata is small, and the arrays it describes are what shiftseg writes: integer labels,
  floating-point embeddings with at least one embedding channel, matching sizes, at most
  :data:`MAX_CHUNKS` chunks of at most :data:`MAX_CHUNK_BYTES` each, stored plainly, with zstd
  or with blosc;
- the voxel size is one positive finite number per axis;
- every chunk file is checked when it is read (:class:`GuardedArray`): a plain file inside the
  folder, no larger than its array's chunks, and, compressed, with headers that promise no
  more than one chunk of data (a small file cannot unpack into gigabytes).

A problem raises :class:`~._errors.ShiftSegError` with one line that says what is wrong and
what to do. The input image is shown from the output's own copy (``image/0``, checked like the
other arrays) where the output stores one; an output written before the input was stored names
it by its path only, and that file is shown only when it is still a plain file (or a zarr
folder passing the same checks) of the labels' size; otherwise the results are shown without
it, with a warning, as for an input that has moved.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..util._errors import ShiftSegError

#: Most chunks one array may have. The reader builds one dask task per chunk, and napari's
#: slicing walks them: 1e5 keeps opening and scrolling quick (a 2048^3 volume in 64^3 tiles has
#: 32768), while a crafted 1e6 x 1e6 array of 1 x 1 chunks (1e12 tasks) would never open.
MAX_CHUNKS = 100_000
#: Most bytes one chunk may hold once decompressed: a chunk is read whole, so this bounds the
#: memory of every read. shiftseg writes one chunk per tile: a 256^3 tile of 4 float32
#: embedding channels is 256 MiB.
MAX_CHUNK_BYTES = 512 * 2**20
#: Most bytes of one metadata file (``zarr.json``, ``.zattrs``...): shiftseg's are a few kB.
MAX_METADATA_BYTES = 8 * 2**20
#: Most files and folders in an output: its six arrays (image, embeddings, foreground,
#: instances, labels_resampled, done flags) at MAX_CHUNKS chunk files each, plus as many
#: folders. Bounds the time the walk over the folder takes.
MAX_STORE_ENTRIES = 12 * MAX_CHUNKS + 1000
#: Chunks of the embeddings read to fit their colours (PCA): evenly spread, whatever the size.
SAMPLE_CHUNKS = 8
#: Most embedding channels: a model has at most 16 (``unet._CONFIG_BOUNDS``), plus foreground.
MAX_CHANNELS = 17

METADATA_FILES = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})
#: First bytes of a zstd frame.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Magic numbers of zstd's skippable (metadata) frames.
SKIPPABLE = (0x184D2A50, 0x184D2A5F)
#: Compressors whose headers state the unpacked size (see GuardedArray._check_chunk).
COMPRESSORS = {"ZstdCodec": "zstd", "Zstd": "zstd", "BloscCodec": "blosc", "Blosc": "blosc"}
REMAKE = "run shiftseg segment again to remake it"


def damaged(name: str, problem: str) -> ShiftSegError:
    """The one-line error for an output that shiftseg did not write this way."""
    return ShiftSegError(f"{name} cannot be opened: {problem}; it was changed or damaged after "
                         f"shiftseg wrote it: {REMAKE}")


def open_output(root: Path, name: str, fmt: str, refusal: str):
    """``(group, record)`` of the output at ``root`` after :func:`check_store`, read-only;
    ``refusal`` is the one-line message when its record is not of format ``fmt``. The one
    preamble of every output the reader opens (a single image, a time series)."""
    import zarr

    from ._replace import RECORD

    check_store(root, name)  # before zarr reads a file: no links, FIFOs or huge files
    try:
        group = zarr.open_group(str(root), mode="r")
        info = group.attrs.get(RECORD)
    except Exception as err:  # noqa: BLE001 - zarr's own parse of broken metadata
        raise damaged(name, f"zarr cannot read it ({first_line(err)})") from None
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise ShiftSegError(refusal)
    return group, info


# --------------------------------------------------------------------------- files


def read_small_json(path: Path, limit: int = MAX_METADATA_BYTES):
    """JSON of a plain file of at most ``limit`` bytes, never following a link or blocking on a
    FIFO; None when there is no such file. Raises OSError or ValueError on anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise ValueError(f"{path.name} is not a small plain file")
        return json.loads(file.read(limit + 1))


def root_attrs(path) -> dict | None:
    """The root attributes of a zarr folder (v3 ``zarr.json`` or v2 ``.zattrs``), read safely;
    None when they are missing or unreadable (then the folder is not a shiftseg output)."""
    root = Path(path)
    try:
        meta = read_small_json(root / "zarr.json")
        if isinstance(meta, dict):
            attrs = meta.get("attributes")
        else:
            attrs = read_small_json(root / ".zattrs")
    except (OSError, ValueError, RecursionError):
        return None
    return attrs if isinstance(attrs, dict) else None


class UnsafeStore(Exception):
    """What makes a zarr folder unsafe to read (see :func:`walk_store`), in words."""


def check_store(root: Path, name: str) -> None:
    """:func:`walk_store` on an output, with its one-line error."""
    try:
        walk_store(root)
    except UnsafeStore as err:
        if err.args[1]:  # too many files: can be an honest, huge output
            raise ShiftSegError(f"{name} holds {err.args[0]}, more than a shiftseg output has (at most "
                                f"{MAX_CHUNKS} chunks per array): run shiftseg segment again with a "
                                "larger --tile") from None
        raise damaged(name, err.args[0]) from None


def walk_store(root: Path) -> None:
    """Walk ``root`` without following links: only plain files and folders, metadata files of
    at most MAX_METADATA_BYTES (zarr reads them whole), at most MAX_STORE_ENTRIES entries in
    all. Raises UnsafeStore(problem, too_many). Chunk files are sized when they are read
    (:class:`GuardedArray`): the walk reads no more than the folder listings (about 10 us per
    file), which keeps opening a large output quick."""
    entries, folders = 0, [os.fspath(root)]
    while folders:
        try:
            with os.scandir(folders.pop()) as scan:
                for entry in scan:
                    entries += 1
                    if entries > MAX_STORE_ENTRIES:
                        raise UnsafeStore(f"more than {MAX_STORE_ENTRIES} files", True)
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    else:
                        _check_entry(entry, root)
        except OSError as err:
            raise UnsafeStore(f"{err.strerror or err} ({err.filename})", False) from None


def _check_entry(entry: os.DirEntry, root: Path) -> None:
    problem = None
    if entry.is_symlink():
        problem = f"is a link (to {os.readlink(entry.path)}), not a file"
    elif not entry.is_file(follow_symlinks=False):
        problem = "is not a plain file (a FIFO, socket or device)"
    elif entry.name in METADATA_FILES:
        size = entry.stat(follow_symlinks=False).st_size
        if size > MAX_METADATA_BYTES:
            problem = (f"is {size / 2**20:.0f} MiB, more than the metadata of a shiftseg output can "
                       f"be ({MAX_METADATA_BYTES / 2**20:.0f} MiB)")
    if problem:
        raise UnsafeStore(f"{Path(entry.path).relative_to(root).as_posix()} {problem}", False)


def _packed_limit(nbytes: int) -> int:
    """Most bytes a stored chunk of ``nbytes`` may take: compressors add a little at worst."""
    return nbytes + nbytes // 64 + 4096


# --------------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class ArrayInfo:
    """What the reader needs of a checked zarr array."""

    array: Any
    chunk_bytes: int
    compressor: str | None  # "zstd", "blosc" or None (stored as is)


def check_array(group, key: str, what: str, name: str) -> ArrayInfo:
    """The zarr array ``key`` of ``group``, checked for a sane chunk grid and a codec whose
    reads are bounded (metadata only: nothing is read)."""
    import zarr

    try:
        array = group[key] if key in group else None
    except Exception as err:  # noqa: BLE001 - zarr's own parse of broken metadata
        raise damaged(name, f"the {what} ({key}) cannot be read ({first_line(err)})") from None
    if not isinstance(array, zarr.Array):
        raise damaged(name, f"it has no {what} array ({key})")
    shape, chunks = tuple(array.shape), tuple(array.chunks)
    if getattr(array, "shards", None) is not None:
        raise damaged(name, f"the {what} ({key}) are stored in shards, which shiftseg never writes")
    if 0 in shape:
        raise damaged(name, f"the {what} ({key}) are empty (shape {_shape(shape)})")
    n_chunks = math.prod(-(-s // c) for s, c in zip(shape, chunks))
    if n_chunks > MAX_CHUNKS:
        raise ShiftSegError(
            f"{name}: the {what} ({_shape(shape)} voxels) are split into {n_chunks} chunks of "
            f"{_shape(chunks)}; napari-shiftseg opens at most {MAX_CHUNKS} per array: run shiftseg "
            "segment again with a larger --tile")
    chunk_bytes = math.prod(chunks) * array.dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise ShiftSegError(
            f"{name}: one chunk of the {what} ({_shape(chunks)}, {array.dtype}) is "
            f"{chunk_bytes / 2**20:.0f} MiB; napari-shiftseg reads at most "
            f"{MAX_CHUNK_BYTES / 2**20:.0f} MiB at once: run shiftseg segment again with a smaller --tile")
    return ArrayInfo(array, chunk_bytes, _compressor(array, key, what, name))


def _compressor(array, key: str, what: str, name: str) -> str | None:
    """The one compressor allowed (zstd or blosc, whose headers state the unpacked size), or
    None; filters, other serializers and other compressors (gzip unpacks without a bound) are
    refused."""
    serializer = getattr(array, "serializer", None)
    codecs = [*array.filters, *array.compressors]
    names = [type(c).__name__ for c in codecs]
    if (serializer is not None and type(serializer).__name__ != "BytesCodec") or len(codecs) > 1 \
            or any(n not in COMPRESSORS for n in names):
        used = ", ".join([type(serializer).__name__] * (serializer is not None) + names)
        raise damaged(name, f"the {what} ({key}) are stored with {used}; shiftseg writes zstd or "
                            "blosc only")
    return COMPRESSORS[names[0]] if names else None


def check_labels_dtype(dtype, name: str) -> None:
    if not np.issubdtype(dtype, np.integer):  # bool is not an integer type to numpy
        raise damaged(name, f"the instances are {dtype} numbers; instance labels are whole "
                            "numbers (an integer type)")


def check_embeddings(emb: ArrayInfo, spatial_ndim: int, foreground: bool, name: str) -> int:
    """Number of embedding channels (the foreground logit, when present, is the last one)."""
    array = emb.array
    if array.ndim != spatial_ndim + 1:
        raise damaged(name, f"the embeddings have {array.ndim} axes; for {spatial_ndim}D "
                            f"instances they have {spatial_ndim + 1} (channels first)")
    if not np.issubdtype(array.dtype, np.floating):
        raise damaged(name, f"the embeddings are {array.dtype} numbers, not floating-point")
    channels = array.shape[0] - int(foreground)
    if not 1 <= channels <= MAX_CHANNELS - 1:
        fg = " plus the foreground channel" if foreground else ""
        n = array.shape[0]
        raise damaged(name, f"the embeddings have {n} channel{'s' * (n != 1)}; shiftseg writes 1 to "
                            f"{MAX_CHANNELS - 1} embedding channels{fg}")
    # The colour layer joins all channels of a chunk into float32 colours: bound that too.
    display = math.prod(array.chunks[1:]) * 4 * max(array.shape[0], 3)
    if display > MAX_CHUNK_BYTES:
        raise ShiftSegError(f"{name}: a chunk of the embeddings is {display / 2**20:.0f} MiB once "
                            f"coloured; napari-shiftseg reads at most {MAX_CHUNK_BYTES / 2**20:.0f} "
                            f"MiB at once: run shiftseg segment again with a smaller --tile")
    return channels


def check_image(group, key: str, labels_shape, name: str, time: bool = False) -> tuple[ArrayInfo, bool]:
    """The input image an output stores (``key``) and whether it has a channel axis: numbers,
    on the instances' grid, with at most one more axis (a multi-channel model's input: its
    channels after the time axis of a series, else first), of at most as many channels as a
    model takes."""
    image = check_array(group, key, "image", name)
    shape, labels_shape = tuple(image.array.shape), tuple(labels_shape)
    channels = len(shape) == len(labels_shape) + 1
    lead = int(time)
    dtype = image.array.dtype
    if shape[:lead] + shape[lead + channels:] != labels_shape \
            or (channels and shape[lead] > MAX_CHANNELS - 1) \
            or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise damaged(name, f"the image ({dtype}, {_shape(shape)}) does not fit the instances "
                            f"({_shape(labels_shape)})")
    return image, channels


def check_grids(labels_shape, emb_shape, fg_shape, info: dict, name: str) -> None:
    """Embeddings and foreground share the network's grid; the labels are on it too, or on the
    image's grid that the output records for a resampled run."""
    labels_shape, emb_shape = tuple(labels_shape), tuple(emb_shape)
    if fg_shape is not None and tuple(fg_shape) != emb_shape:
        raise damaged(name, f"the foreground ({_shape(fg_shape)}) and the embeddings "
                            f"({_shape(emb_shape)}) differ in size")
    if labels_shape == emb_shape:
        return
    resampled = info.get("resampled")
    if not isinstance(resampled, dict) or _as_shape(resampled.get("image_shape")) != labels_shape \
            or _as_shape(resampled.get("working_shape")) != emb_shape:
        raise damaged(name, f"the instances ({_shape(labels_shape)}) and the embeddings "
                            f"({_shape(emb_shape)}) differ in size, and the output records no "
                            "resampling between them")


def check_voxel_size(value, ndim: int, name: str) -> tuple[float, ...]:
    """The recorded voxel size, one positive finite number per axis (1 each when none is
    recorded, as shiftseg does for an image without one)."""
    if value is None:
        return (1.0,) * ndim
    ok = isinstance(value, list) and len(value) == ndim and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in value)
    if not ok:
        raise damaged(name, f"its voxel size is {_short(value)}; it must be {ndim} positive "
                            "numbers, one per axis")
    return tuple(float(v) for v in value)


def check_placement(where: dict, name: str) -> None:
    """The embeddings' placement (voxel size times resampling) stays finite and positive."""
    values = [*where["scale"], *where["translate"]]
    if not all(math.isfinite(v) for v in values) or not all(s > 0 for s in where["scale"]):
        raise damaged(name, f"the embeddings' voxel size works out as {where['scale']}")


# --------------------------------------------------------------------------- chunk reads


class GuardedArray:
    """A zarr array whose chunk files are checked just before each read (see module doc); for
    ``dask.array.from_array``, which reads it one chunk per task."""

    def __init__(self, info: ArrayInfo, root: Path, name: str):
        self.info, self.name = info, name
        self.array = info.array
        self.shape, self.dtype, self.ndim = tuple(self.array.shape), self.array.dtype, self.array.ndim
        self.chunks = tuple(self.array.chunks)
        self._root = Path(os.path.realpath(root))
        self._folder = self._root / self.array.path

    def __getitem__(self, key):
        for coords in self._chunks_of(key):
            self._check_chunk(coords)
        return self.array[key]

    def _chunks_of(self, key):
        """Chunk coordinates that a tuple of slices (dask's keys are) touches."""
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        ranges = []
        for index, size, chunk in zip(key, self.shape, self.chunks):
            if isinstance(index, slice):
                start, stop, _ = index.indices(size)
            else:  # one position
                start = operator.index(index) % size
                stop = start + 1
            ranges.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
        return itertools.product(*ranges)

    def _check_chunk(self, coords) -> None:
        path = self._folder / self.array.metadata.encode_chunk_key(tuple(coords))
        where = f"chunk {path.relative_to(self._root).as_posix()}"
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return  # never written (all background): zarr fills it in
        if not stat.S_ISREG(info.st_mode) or not os.path.realpath(path).startswith(f"{self._root}{os.sep}"):
            raise damaged(self.name, f"{where} is not a plain file inside the output")
        if info.st_size > _packed_limit(self.info.chunk_bytes):
            raise damaged(self.name, f"{where} is {info.st_size} bytes, more than a chunk of "
                                     f"{self.info.chunk_bytes} bytes can take")
        if self.info.compressor is None:
            return  # stored as is: the size check above is the bound
        with open(path, "rb", opener=_no_follow) as file:
            unpacked = (_blosc_size(file) if self.info.compressor == "blosc"
                        else _zstd_size(file, info.st_size))
        if unpacked is None or not 0 < unpacked <= self.info.chunk_bytes:
            raise damaged(self.name, f"{where} claims to unpack to {unpacked or 'an unknown number of'} "
                                     f"bytes; a chunk holds {self.info.chunk_bytes}")


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def _blosc_size(file) -> int | None:
    """Unpacked size in a blosc header (numcodecs allocates that much)."""
    head = file.read(16)
    return int.from_bytes(head[4:8], "little") if len(head) == 16 else None


def _zstd_size(file, size: int) -> int | None:
    """Sum of the unpacked sizes that the frames of a zstd chunk declare, None when a frame
    declares none or is malformed. numcodecs allocates that sum, but unpacks a chunk with an
    undeclared (or zero) size without any bound: 10 MB of zstd can hold 300 GB of zeros. Only
    frame and block headers are read (bodies are skipped): a few small reads per chunk."""
    total = 0
    while file.tell() < size:
        magic = file.read(4)
        if SKIPPABLE[0] <= int.from_bytes(magic, "little") <= SKIPPABLE[1]:  # a metadata frame
            file.seek(int.from_bytes(file.read(4), "little"), os.SEEK_CUR)
            continue
        header = _zstd_frame_header(file) if magic == ZSTD_MAGIC else None
        if header is None or not _skip_blocks(file, size, checksum=header[1]):
            return None
        total += header[0]
    return total if file.tell() == size else None


def _zstd_frame_header(file) -> tuple[int, bool] | None:
    """(content size, has a checksum) of a frame whose magic number was just read; None when
    it declares no size. Leaves the file at the frame's first block."""
    byte = file.read(1)
    if not byte:
        return None
    descriptor = byte[0]
    size_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    width = (single_segment, 2, 4, 8)[size_flag]  # bytes of the size field; flag 0: 1 byte or none
    file.seek((1 - single_segment) + (0, 1, 2, 4)[dict_flag], os.SEEK_CUR)  # window, dictionary id
    field = file.read(width)
    if width == 0 or len(field) != width:
        return None
    return int.from_bytes(field, "little") + (256 if width == 2 else 0), bool(descriptor & 4)


def _skip_blocks(file, size: int, checksum: bool) -> bool:
    """Skip a frame's blocks (and its checksum); False when they are malformed."""
    while True:
        header = file.read(3)
        if len(header) != 3:
            return False
        value = int.from_bytes(header, "little")
        last, kind, length = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:  # the reserved block type
            return False
        file.seek(1 if kind == 1 else length, os.SEEK_CUR)  # an RLE block stores its one byte
        if last:
            file.seek(4 * checksum, os.SEEK_CUR)
        if file.tell() > size:
            return False
        if last:
            return True


def colour_sample(guarded: GuardedArray, channels: int, points: int) -> np.ndarray:
    """(channels, N) embeddings from at most SAMPLE_CHUNKS chunks spread evenly over the grid,
    strided within each to about ``points`` in all: bounded reads, whatever the output's size
    (a stride over the whole volume would touch every chunk)."""
    spatial, chunks = guarded.shape[1:], guarded.chunks[1:]
    grid = tuple(-(-s // c) for s, c in zip(spatial, chunks))
    total = math.prod(grid)
    picks = sorted({round(i * (total - 1) / max(1, SAMPLE_CHUNKS - 1)) for i in range(min(total, SAMPLE_CHUNKS))})
    per_chunk = max(1, points // len(picks))
    blocks = []
    for flat in picks:
        corner = [int(i) * c for i, c in zip(np.unravel_index(flat, grid), chunks)]
        ends = [min(a + c, s) for a, c, s in zip(corner, chunks, spatial)]
        voxels = math.prod(e - a for a, e in zip(corner, ends))
        step = max(1, int((voxels / per_chunk) ** (1 / len(spatial))))
        key = (slice(0, channels),) + tuple(slice(a, e, step) for a, e in zip(corner, ends))
        blocks.append(np.asarray(guarded[key], dtype=np.float32).reshape(channels, -1))
    return np.concatenate(blocks, axis=1)


# --------------------------------------------------------------------------- the input image


def usable_input(source, name: str) -> tuple[str, Any] | None:
    """(path, channel) of the input image the output records, when it can be shown safely:
    a plain file, or a zarr folder that passes :func:`walk_store`. Else None, with a warning
    when there is a path (a moved input is shown the same way: results only)."""
    if not isinstance(source, dict) or not isinstance(source.get("path"), str) or not source["path"]:
        return None
    path = Path(source["path"])
    try:
        mode = os.stat(path).st_mode  # follows links: an input may be one; never opens it
    except (OSError, ValueError):
        _not_shown(name, path, "it is not there any more")
        return None
    if stat.S_ISDIR(mode):  # a zarr image: read as carefully as the output
        try:
            walk_store(path)
        except UnsafeStore as err:
            _not_shown(name, path, f"it holds {err.args[0]}" if err.args[1] else err.args[0])
            return None
    elif not stat.S_ISREG(mode):
        _not_shown(name, path, "it is not a plain file (a FIFO, socket or device)")
        return None
    return str(path), source.get("channel")


def _not_shown(name: str, path: Path, why: str) -> None:
    warnings.warn(f"{name}: the input image {path} is not shown: {why}", UserWarning, stacklevel=3)


def input_matches(image, labels_shape, several: bool) -> bool:
    """An input that changed size since the run does not belong under these labels."""
    spatial = tuple(image.shape[1:] if several else image.shape)
    return spatial == tuple(labels_shape)


# --------------------------------------------------------------------------- words


def _shape(shape) -> str:
    return " x ".join(str(s) for s in shape)


def _as_shape(value) -> tuple | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    return None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]
