"""Crafted ``shiftseg segment`` outputs opened by the napari reader (issue 25).

Each gives a one-line ShiftSegError that names the problem, or a correct result (the results
without the input image, with a warning): never a hang, never gigabytes, never a traceback.
The hostile outputs are copies of a real 64 x 64 output whose metadata lies while the data
stays small: every one takes under 10 MB of disk (huge files are sparse). An output stores its
input (``image/0``, issue 26); the attacks on the input's path are made on outputs turned back
into the layout written before that, which name their input by its path only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_shiftseg._reader import get_segmentation_reader, read_segmentation
from napari_shiftseg.files import _reader_checks
from napari_shiftseg.inference.segment import ATTRS, segment_to_zarr
from napari_shiftseg.util._errors import ShiftSegError

MAX_DISK = 10 * 2**20  # a hostile input of at most 10 MB (issue 25)
EMB_CHUNK = {"0.5": "embeddings/c/0/0/0", "0.4": "embeddings/0/0/0"}
LABEL_CHUNK = {"0.5": "labels/instances/0/c/0/0", "0.4": "labels/instances/0/0/0"}
IMAGE_CHUNK = {"0.5": "image/0/c/0/0", "0.4": "image/0/0/0"}


# --------------------------------------------------------------------------- crafting


def _meta(out: Path, node: str) -> Path:
    v3 = out / node / "zarr.json"
    return v3 if v3.exists() else out / node / (".zattrs" if node == "" else ".zarray")


def _edit(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _record(**values):
    """Attack: set keys of the output's shiftseg record (root attributes)."""
    def attack(out: Path, _):
        def change(meta):
            attrs = meta["attributes"] if "attributes" in meta else meta
            attrs[ATTRS].update(values)
        _edit(_meta(out, ""), change)
    return attack


def _array(node: str, shape=None, chunks=None, dtype=None, fill=None, codec=None, **keys):
    """Attack: rewrite an array's metadata (zarr v3 ``zarr.json``, v2 ``.zarray``)."""
    def attack(out: Path, _):
        def change(meta):
            v3 = meta.get("zarr_format") == 3
            if shape is not None:
                meta["shape"] = shape
            if chunks is not None:
                if v3:
                    meta["chunk_grid"]["configuration"]["chunk_shape"] = chunks
                else:
                    meta["chunks"] = chunks
            if dtype is not None:
                meta["data_type" if v3 else "dtype"] = dtype
            if fill is not None:
                meta["fill_value"] = fill
            if codec is not None:
                meta["codecs"] = [meta["codecs"][0], codec]
            meta.update(keys)
        _edit(_meta(out, node), change)
    return attack


def _both(*attacks):
    def attack(out: Path, folder: Path):
        for one in attacks:
            one(out, folder)
    return attack


def _older(out: Path, _=None) -> None:
    """An output as written before issue 26: no copy of the input, only its path."""
    _edit(_meta(out, ""), lambda meta: meta.get("attributes", meta)[ATTRS].pop("input_stored"))
    shutil.rmtree(out / "image")


def _input(make):
    """Attack: point the recorded input image of an older output at what ``make(folder)`` returns."""
    def attack(out: Path, folder: Path):
        _older(out)
        _record(input={"path": str(make(folder)), "channel": None})(out, folder)
    return attack


def _no_image(out: Path, _) -> None:
    """Attack: the stored input is gone while the record says it is there."""
    shutil.rmtree(out / "image")


def _fifo(folder: Path) -> Path:
    path = folder / "input.fifo"
    if not path.exists():
        os.mkfifo(path)
    return path


def _small_tif(folder: Path) -> Path:
    path = folder / "other.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8))
    return path


def _zarr_image(folder: Path, link: bool = False) -> Path:
    """The input image as a zarr folder; with ``link``, one chunk is a link to /dev/zero."""
    import zarr

    path = folder / ("linked.zarr" if link else "cells.zarr")
    if not path.exists():
        array = zarr.create_array(path, shape=(64, 64), chunks=(16, 16), dtype="uint8")
        array[...] = 7
        if link:
            (path / "c" / "0" / "0").unlink()
            (path / "c" / "0" / "0").symlink_to("/dev/zero")
    return path


def _replace(chunk: dict, make):
    """Attack: replace a chunk file (per NGFF version) with what ``make(path)`` creates."""
    def attack(out: Path, _):
        path = out / chunk[_version(out)]
        path.unlink()
        make(path)
    return attack


def _version(out: Path) -> str:
    return "0.5" if (out / "zarr.json").exists() else "0.4"


def _symlink_to(target):
    return lambda path: path.symlink_to(target)


def _sparse(nbytes: int):
    """A file that claims ``nbytes`` but takes no disk (a hole)."""
    def make(path: Path):
        with open(path, "wb") as file:
            file.truncate(nbytes)
    return make


def _zstd_frame(blocks: int, declared: int | None = None, block_size: int = 131072) -> bytes:
    """A zstd frame of ``blocks`` RLE blocks of ``block_size`` zeros, 4 bytes each on disk;
    its header declares ``declared`` bytes (true or a lie) or, with None, no size at all."""
    header = (b"\x00\x38" if declared is None  # no size, 128 KiB window
              else b"\xe0" + declared.to_bytes(8, "little"))  # one segment, 8-byte size
    block = lambda last: (last | 1 << 1 | block_size << 3).to_bytes(3, "little") + b"\0"  # noqa: E731
    return _reader_checks.ZSTD_MAGIC + header + b"".join(block(int(i == blocks - 1)) for i in range(blocks))


def _write(data_for):
    return lambda path: path.write_bytes(data_for(path))


def _patch(chunk: dict, change):
    """Attack: rewrite a chunk file's bytes with ``change(bytes)``."""
    def attack(out: Path, _):
        path = out / chunk[_version(out)]
        path.write_bytes(change(path.read_bytes()))
    return attack


def _blosc_lie(data: bytes) -> bytes:
    """A blosc chunk whose header claims 4 GiB once unpacked (bytes 4-8: the unpacked size)."""
    return data[:4] + (2**32 - 1).to_bytes(4, "little") + data[8:]


def _nested_metadata(out: Path, _):
    """Root metadata nested 100000 lists deep (json's recursion limit)."""
    _meta(out, "").write_text("[" * 100_000 + "]" * 100_000)


# --------------------------------------------------------------------------- the table

#: (id, NGFF version, attack, what happens): a regex for the ShiftSegError (raised when the
#: output is opened or when a layer is read), or ``("shown", warning regex or None)`` for a
#: correct result without the input image.
CASES = [
    # input.path (a FIFO blocked the reader forever): not shown, as a moved input
    ("input FIFO", "0.5", _input(_fifo), ("shown", "not a plain file")),
    ("input device", "0.5", _input(lambda _: Path("/dev/zero")), ("shown", "not a plain file")),
    ("input gone", "0.5", _input(lambda f: f / "gone.tif"), ("shown", "not there any more")),
    ("input of another size", "0.5", _input(_small_tif), ("shown", "is now 32 x 32 voxels")),
    ("input not text", "0.5", _both(_older, _record(input={"path": 42})), ("shown", None)),
    ("input zarr with a link", "0.5", _input(lambda f: _zarr_image(f, link=True)), ("shown", "c/0/0 is a link")),
    # shapes, chunk counts and chunk sizes, from the metadata, before any dask array
    ("labels 1e7^2", "0.5", _array("labels/instances/0", shape=[10**7] * 2), r"split into \d+ chunks"),
    ("1e6^2 in 1x1 chunks", "0.5", _both(
        _array("labels/instances/0", shape=[10**6] * 2, chunks=[1, 1]),
        _array("embeddings", shape=[4, 10**6, 10**6], chunks=[4, 1, 1]),
        _array("foreground", shape=[10**6] * 2, chunks=[1, 1])), r"split into 1000000000000 chunks"),
    ("one 1e7^2 chunk", "0.5", _array("labels/instances/0", shape=[10**7] * 2, chunks=[10**7] * 2),
     r"one chunk of the instances .* is 381469727 MiB"),
    ("1e7^2 in 62500 chunks", "0.4", _array("labels/instances/0", shape=[10**7] * 2, chunks=[40000] * 2),
     r"one chunk of the instances .* is 6104 MiB"),
    ("embeddings 0 channels", "0.5", _array("embeddings", shape=[0, 64, 64]), "empty"),
    ("embeddings 1 channel", "0.5", _array("embeddings", shape=[1, 64, 64], chunks=[1, 16, 16]),
     "embeddings have 1 channel;"),
    ("embeddings 99 channels", "0.4", _array("embeddings", shape=[99, 64, 64]), "have 99 channels"),
    ("embeddings of integers", "0.5", _array("embeddings", dtype="int32", fill=0), "not floating-point"),
    ("float labels", "0.5", _array("labels/instances/0", dtype="float32", fill=0.0), "instances are float32"),
    ("bool labels", "0.5", _array("labels/instances/0", dtype="bool", fill=False), "instances are bool"),
    ("float labels v2", "0.4", _array("labels/instances/0", dtype="<f8", fill=0.0), "instances are float64"),
    ("4D labels", "0.5", _array("labels/instances/0", shape=[1, 1, 64, 64], chunks=[1, 1, 16, 16],
                                       dimension_names=None),
     "have 4 axes"),
    ("labels of another size", "0.5", _array("labels/instances/0", shape=[32, 32]), "differ in size"),
    ("foreground of another size", "0.4", _array("foreground", shape=[64, 63]), "differ in size"),
    # the stored input (issue 26): checked like the other arrays
    ("image of another size", "0.5", _array("image/0", shape=[32, 32]), r"the image \(uint8, 32 x 32\) does not fit"),
    ("image of 1000 channels", "0.4", _array("image/0", shape=[1000, 64, 64], chunks=[1, 16, 16]),
     "image .* does not fit the instances"),
    ("image 1e6^2 in 1x1 chunks", "0.5", _array("image/0", shape=[10**6] * 2, chunks=[1, 1]), r"split into"),
    ("image gone", "0.4", _no_image, r"it has no image array \(image/0\)"),
    ("image chunk -> /dev/zero", "0.5", _replace(IMAGE_CHUNK, _symlink_to("/dev/zero")), "is a link"),
    ("gzip chunks", "0.5", _array("labels/instances/0", codec={"name": "gzip", "configuration": {"level": 1}}),
     "stored with .*Gzip"),
    # files that are not plain files, or are too large
    ("chunk -> /dev/zero", "0.5", _replace(LABEL_CHUNK, _symlink_to("/dev/zero")), r"is a link \(to /dev/zero\)"),
    ("v2 chunk -> /dev/zero", "0.4", _replace(EMB_CHUNK, _symlink_to("/dev/zero")), "is a link"),
    ("metadata -> /dev/zero", "0.5", _replace({"0.5": "zarr.json"}, _symlink_to("/dev/zero")),
     "zarr.json is a link"),
    ("chunk FIFO", "0.5", _replace(EMB_CHUNK, os.mkfifo), "not a plain file"),
    ("sparse 1 GiB chunk", "0.5", _replace(LABEL_CHUNK, _sparse(2**30)),
     "chunk labels/instances/0/c/0/0 is 1073741824 bytes"),
    ("sparse 100 MiB metadata", "0.4", _replace({"0.4": ".zattrs"}, _sparse(100 * 2**20)),
     r"\.zattrs is 100 MiB, more than the metadata"),
    ("metadata too deep", "0.5", _nested_metadata, "zarr cannot read it"),
    ("sparse 1 MiB embeddings chunk", "0.5", _replace(EMB_CHUNK, _sparse(2**20)), "more than a chunk of 4096"),
    # compressed chunks that unpack to more than a chunk (numcodecs would allocate it all)
    ("zstd bomb", "0.5", _replace(EMB_CHUNK, _write(lambda _: _zstd_frame(1000))),
     "unpack to an unknown number of bytes"),
    ("zstd bomb after a frame", "0.5",
     _replace(EMB_CHUNK, _write(lambda _: _zstd_frame(1, 4096, 4096) + _zstd_frame(9))),
     "unpack to an unknown number"),
    ("zstd size lie in labels", "0.5", _replace(LABEL_CHUNK, _write(lambda _: _zstd_frame(1, 2**32))),
     "unpack to 4294967296 bytes"),
    ("blosc size lie", "0.4", _patch(EMB_CHUNK, _blosc_lie), "unpack to 4294967295"),
    # voxel sizes: refused, naming the value
    ("voxel size text", "0.5", _record(voxel_size=["a", 1.0]), r"voxel size is \['a', 1\.0\]"),
    ("voxel size NaN", "0.5", _record(voxel_size=[float("nan"), 1.0]), r"voxel size is \[nan, 1\.0\]"),
    ("voxel size inf", "0.4", _record(voxel_size=[float("inf"), 1.0]), r"voxel size is \[inf"),
    ("voxel size 0", "0.5", _record(voxel_size=[0, 0.25]), r"voxel size is \[0, 0\.25\]"),
    ("voxel size negative", "0.5", _record(voxel_size=[-0.25, 0.25]), r"voxel size is \[-0\.25"),
    ("voxel size too short", "0.5", _record(voxel_size=[0.25]), r"\[0\.25\]; it must be 2 positive"),
    ("voxel size bools", "0.5", _record(voxel_size=[True, True]), r"\[True, True\]"),
    ("voxel size not a list", "0.5", _record(voxel_size="0.25"), r"voxel size is '0\.25'"),
    ("huge voxel size, resampled", "0.5", _both(
        _record(voxel_size=[1e308, 1e308], resampled={"image_shape": [64, 64], "working_shape": [8, 8]}),
        _array("embeddings", shape=[4, 8, 8]), _array("foreground", shape=[8, 8])),
     "embeddings' voxel size works out as"),
]
REFUSED = [case for case in CASES if isinstance(case[3], str)]


def _build(base: Path, folder: Path, case) -> Path:
    name, version, attack, _ = case
    out = folder / (re.sub(r"\W+", "_", name) + ".zarr")
    shutil.copytree(base / f"v{version}.zarr", out)
    attack(out, folder)
    return out


def _disk_usage(path: Path) -> int:
    """Bytes of disk a folder takes (holes of sparse files take none; links are not followed)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 64 x 64 output per NGFF version (0.5: zarr v3 and zstd; 0.4: zarr v2 and
    blosc), with the input's voxel size of 0.25 x 0.25 um."""
    from helpers import save_tiny

    folder = tmp_path_factory.mktemp("reader")
    image = (np.random.default_rng(0).random((64, 64)) * 200).astype(np.uint8)
    tifffile.imwrite(folder / "cells.tif", image, imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "um"})
    model = save_tiny(folder / "m.safetensors")
    for version in ("0.5", "0.4"):
        segment_to_zarr(folder / "cells.tif", folder / f"v{version}.zarr", model, tile=16, device="cpu",
                        ngff=version, min_size=0, diameter=None)
    return folder


@pytest.fixture(scope="module")
def hostile(base, tmp_path_factory):
    """id -> the corrupted copy of ``base``'s output, for every case."""
    folder = tmp_path_factory.mktemp("hostile")
    return {case[0]: _build(base, folder, case) for case in CASES}


def _open_all(path: Path) -> list:
    """What napari does with the layers: read them (the reader alone reads a few chunks)."""
    layers = read_segmentation(path)
    for data, _, _ in layers:
        np.asarray(data)
    return layers


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_honest_output_opens(base, version):
    out = base / f"v{version}.zarr"
    assert get_segmentation_reader(str(out)) is read_segmentation
    layers = _open_all(out)
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["cells.tif", f"embeddings [v{version}]", f"foreground [v{version}]", f"instances [v{version}]"]
    assert all(kwargs["scale"] == (0.25, 0.25) for _, kwargs, _ in layers)
    labels = layers[-1][0]
    assert labels.shape == (64, 64) and labels.dtype == np.int32 and int(labels.max()) > 0
    np.testing.assert_array_equal(np.asarray(layers[0][0]), tifffile.imread(base / "cells.tif"))
    rgb = np.asarray(layers[1][0])
    assert rgb.shape == (64, 64, 3) and 0 <= rgb.min() and rgb.max() <= 1


@pytest.mark.parametrize("case", REFUSED, ids=[case[0] for case in REFUSED])
def test_hostile_output_is_refused_in_one_line(hostile, case):
    name, _, _, expected = case
    path = hostile[name]
    with pytest.raises(ShiftSegError, match=expected) as err:
        _open_all(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith(path.name)  # says which output


SHOWN = [case for case in CASES if not isinstance(case[3], str)]


@pytest.mark.parametrize("case", SHOWN, ids=[case[0] for case in SHOWN])
def test_unusable_input_is_left_out(hostile, case):
    """An input that is not a plain file (a FIFO blocked the reader), gone, or of another size:
    the results are shown without it."""
    name, _, _, (_, warning) = case
    if warning is None:
        layers = _open_all(hostile[name])
    else:
        with pytest.warns(UserWarning, match=warning):
            layers = _open_all(hostile[name])
    assert [layer_type for _, _, layer_type in layers] == ["image", "image", "labels"]  # no input image
    assert not any(kwargs["name"].endswith(".fifo") or kwargs["name"].endswith(".tif") for _, kwargs, _ in layers)


def test_zarr_input_is_shown(base, tmp_path):
    out = tmp_path / "zin.zarr"
    shutil.copytree(base / "v0.5.zarr", out)
    _input(_zarr_image)(out, tmp_path)
    image, kwargs, _ = _open_all(out)[0]
    assert kwargs["name"] == "cells.zarr" and np.asarray(image).shape == (64, 64) and np.asarray(image).max() == 7


def test_stored_input_is_shown_wherever_its_file_went(base, tmp_path, recwarn):
    """issue 26: the output's copy of the input is shown; the file it was read from is not
    needed (it has moved here), and nothing is said about it."""
    out = tmp_path / "moved.zarr"
    shutil.copytree(base / "v0.5.zarr", out)
    _record(input={"path": str(tmp_path / "gone" / "cells.tif"), "channel": None})(out, tmp_path)
    layers = _open_all(out)
    assert [kwargs["name"] for _, kwargs, _ in layers][0] == "cells.tif" and not recwarn.list
    np.testing.assert_array_equal(np.asarray(layers[0][0]), tifffile.imread(base / "cells.tif"))
    assert layers[0][1]["scale"] == (0.25, 0.25)


def test_output_without_voxel_size_gets_unit_voxels(base, tmp_path):
    out = tmp_path / "plain.zarr"
    shutil.copytree(base / "v0.5.zarr", out)
    _edit(_meta(out, ""), lambda meta: meta["attributes"][ATTRS].pop("voxel_size"))
    assert all(kwargs["scale"] == (1.0, 1.0) for _, kwargs, _ in read_segmentation(out))


def test_reader_is_not_offered_what_it_cannot_identify_safely(hostile, base, tmp_path):
    """napari asks every reader about every .zarr: the root metadata is read without following
    a link, and nothing else is read."""
    assert get_segmentation_reader(hostile["metadata -> /dev/zero"]) is None
    assert get_segmentation_reader(hostile["metadata too deep"]) is None
    (tmp_path / "fifo.zarr").mkdir()
    os.mkfifo(tmp_path / "fifo.zarr" / "zarr.json")
    assert get_segmentation_reader(tmp_path / "fifo.zarr") is None
    os.mkfifo(tmp_path / "pipe.zarr")
    assert get_segmentation_reader(tmp_path / "pipe.zarr") is None
    other = tmp_path / "other.zarr"
    shutil.copytree(base / "v0.5.zarr", other)
    _record(format="something else")(other, tmp_path)
    assert get_segmentation_reader(other) is None
    with pytest.raises(ShiftSegError, match="not a shiftseg segment output"):
        read_segmentation(other)


def test_too_many_files_is_refused(base, tmp_path, monkeypatch):
    """The walk over the folder stops at MAX_STORE_ENTRIES (1e6 by default: lowered here)."""
    out = tmp_path / "many.zarr"
    shutil.copytree(base / "v0.5.zarr", out)
    monkeypatch.setattr(_reader_checks, "MAX_STORE_ENTRIES", 50)
    with pytest.raises(ShiftSegError, match="holds more than 50 files, more than a shiftseg output has"):
        read_segmentation(out)


def test_colours_read_a_bounded_number_of_chunks(base, monkeypatch):
    """The reader reads SAMPLE_CHUNKS chunks of embeddings to fit the colours, not a stride
    over every chunk; nothing else until a layer is shown."""
    reads = []
    original = _reader_checks.GuardedArray._check_chunk
    monkeypatch.setattr(_reader_checks.GuardedArray, "_check_chunk",
                        lambda self, coords: reads.append(self.array.path) or original(self, coords))
    read_segmentation(base / "v0.5.zarr")  # 16 chunks per array
    assert reads == ["embeddings"] * _reader_checks.SAMPLE_CHUNKS


CHILD = """
import sys, warnings
from pathlib import Path
import numpy as np
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg._reader import read_segmentation

warnings.simplefilter("ignore")
for path in sys.argv[1:]:
    try:
        layers = read_segmentation(path)
        for data, _, _ in layers:
            np.asarray(data)
        print(Path(path).name, "shown", len(layers), sep="\\t")
    except ShiftSegError as err:
        print(Path(path).name, "refused", err, sep="\\t")
report_peak()
"""


def test_all_hostile_outputs_stay_bounded(hostile):
    """All of them, in one fresh process under the memory and CPU bounds of helpers."""
    from helpers import MEMORY_BOUND, run_bounded

    assert all(_disk_usage(path) <= MAX_DISK for path in hostile.values())  # small inputs
    result = run_bounded(CHILD, *(str(hostile[case[0]]) for case in CASES))
    assert result.returncode == 0, result.stderr[-3000:]
    *lines, peak = result.stdout.strip().splitlines()
    outcome = {line.split("\t")[0]: line.split("\t")[1] for line in lines}
    for name, _, _, expected in CASES:
        want = "refused" if isinstance(expected, str) else "shown"
        assert outcome[hostile[name].name] == want, (name, outcome.get(hostile[name].name))
    assert int(peak) * 2**20 < MEMORY_BOUND
