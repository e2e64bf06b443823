"""issue 25: hostile bioimage.io packages and impossible recorded settings.

Every hostile package (a zip bomb in its weights, a tensor that claims gigabytes, a huge or
malformed rdf.yaml, a junk .pt, a FIFO, a link to /dev/zero) is refused with one line, and all
of them together within 1 GiB and 30 CPU seconds in a fresh process. A model file or package
whose recorded settings cannot give a result (``min_size: 1e30``, ``object_diameter: 1e-9``)
is refused when it is loaded or saved, instead of segmenting nothing without a word.

Packages are written by hand here (the fields shiftseg reads), so these tests do not need
bioimageio.spec; ``test_a_handmade_package_loads`` shows that the good one is accepted. Every
hostile file is under 10 MB on disk.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from helpers import MEMORY_BOUND, NORMALIZATION, run_bounded, tiny_net
from safetensors.torch import save_file

from napari_shiftseg.cli import main
from napari_shiftseg.network import bmz
from napari_shiftseg.network.modelio import (
    FORMAT,
    MAX_OBJECT_DIAMETER,
    Model,
    ball_voxels,
    bundled_model_path,
    load_model,
    read_metadata,
    save_model,
)
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)
MiB = 1 << 20


@pytest.fixture(scope="module")
def net():
    return tiny_net(ndim=2, levels=2, base=2)


# --------------------------------------------------------------------------- building packages


def settings(**changes) -> dict:
    return {"bandwidth": 1.25, "fg_threshold": 0.5, "min_size": 7, "merge_distance": 0.0,
            "absorb_small": False, "fill_holes": False, **changes}


def rdf_for(net, **shiftseg) -> dict:
    """The fields of an exported rdf.yaml that shiftseg reads."""
    return {"type": "model", "format_version": "0.5.3", "name": "handmade",
            "weights": {"pytorch_state_dict": {
                "source": "weights.pt",
                "architecture": {"callable": "build_network", "import_from": "napari_shiftseg.network.bmz",
                                 "kwargs": {"config": json.loads(json.dumps(net.config.to_dict()))}}}},
            "config": {"shiftseg": {"settings": settings(), "object_diameter": 20.0,
                                    "normalization": dict(NORMALIZATION), **shiftseg}}}


def torch_bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def folder(path: Path, rdf, weights: bytes | None) -> Path:
    """A package folder; ``rdf`` a dict (dumped as YAML), text or bytes."""
    path.mkdir()
    text = yaml.safe_dump(rdf) if isinstance(rdf, dict) else rdf
    (path / "rdf.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    if weights is not None:
        (path / "weights.pt").write_bytes(weights)
    return path


def zipped(path: Path, members: dict[str, bytes], declare: dict[str, int] | None = None) -> Path:
    """A package .zip of ``members`` (deflated); ``declare`` forges the sizes its central
    directory claims for some of them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    if declare:
        path.write_bytes(forge_sizes(path.read_bytes(), declare))
    return path


def forge_sizes(data: bytes, declare: dict[str, int]) -> bytes:
    """Zip bytes whose central directory claims ``declare[name]`` uncompressed bytes for name."""
    data = bytearray(data)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = int.from_bytes(data[at + 28:at + 30], "little")
        name = data[at + 46:at + 46 + length].decode()
        if name in declare:
            data[at + 24:at + 28] = declare[name].to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 46)
    return bytes(data)


class _Claim:
    """A storage placeholder: the pickle says it holds ``numel`` floats, the file holds 4."""

    def __init__(self, numel):
        self.numel = numel


class _Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        strides = tuple(math.prod(self.shape[i + 1:]) for i in range(len(self.shape)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, strides, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Claim) else None


def claiming(name: str, numel: int, shape: tuple) -> bytes:
    """A torch weights file whose pickle claims a ``numel``-float storage for ``name``, with a
    16-byte record: a 1 kB file that asks for gigabytes."""
    real = zipfile.ZipFile(io.BytesIO(torch_bytes({name: torch.zeros(4)})))
    pickled = io.BytesIO()
    _Pickler(pickled, protocol=2).dump({name: _Tensor(_Claim(numel), shape)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info in real.infolist():
            archive.writestr(info.filename, pickled.getvalue() if info.filename.endswith("data.pkl")
                             else real.read(info))
    return out.getvalue()


def build_in(tmp: Path, build, net) -> Path:
    tmp.mkdir()
    return build(net, tmp)


def disk_size(path: Path) -> int:
    """Bytes on disk of a package file or folder (links and FIFOs count nothing)."""
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files)


def good_state(net) -> dict:
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def test_a_handmade_package_loads(net, tmp_path):
    """The packages below differ from this one only by what makes them hostile."""
    rdf, weights = rdf_for(net), torch_bytes(good_state(net))
    for path in (folder(tmp_path / "pkg", rdf, weights),
                 zipped(tmp_path / "pkg.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode(), "weights.pt": weights})):
        model = load_model(path)
        x = torch.randn(1, 1, 44, 44)
        with torch.no_grad():
            assert torch.equal(model.net(x), net(x))
        assert model.meta["min_size"] == 7 and read_metadata(path).meta["object_diameter"] == 20.0


# --------------------------------------------------------------------------- hostile packages

def huge_comment() -> bytes:
    """50 MB, far above bmz.MAX_RDF_BYTES; about 50 kB deflated."""
    return b"# " + b"x" * (50 * MiB) + b"\n"


def _bomb_in_weights(net, tmp):
    """The issue's 3.2 MB package: an extra all-zero tensor deflates to almost nothing."""
    state = dict(good_state(net), bomb=torch.zeros(4 * MiB))  # 16 MB unpacked
    return zipped(tmp / "bomb.zip", {"rdf.yaml": yaml.safe_dump(rdf_for(net)).encode(),
                                     "weights.pt": torch_bytes(state)})


def _declared_4gb(net, tmp):
    members = {"rdf.yaml": yaml.safe_dump(rdf_for(net)).encode(), "weights.pt": torch_bytes(good_state(net))}
    return zipped(tmp / "declared.zip", members, declare={"weights.pt": 4_000_000_000})


def _declared_small(net, tmp):
    """The central directory says 100 bytes; the stream holds more: reading stops at 100."""
    members = {"rdf.yaml": yaml.safe_dump(rdf_for(net)).encode(), "weights.pt": torch_bytes(good_state(net))}
    return zipped(tmp / "short.zip", members, declare={"weights.pt": 100})


def _inner_record_4gb(net, tmp):
    """weights.pt is itself a zip: one of its records claims 4 GB."""
    inner = forge_sizes(torch_bytes(good_state(net)), {"archive/data/0": 4_000_000_000})
    return folder(tmp / "inner", rdf_for(net), inner)


def _claims_gigabytes(net, tmp):
    first = sorted(good_state(net))[0]
    return folder(tmp / "claims", rdf_for(net), claiming(first, 10**9, (10**9,)))


def _claims_huge_shape(net, tmp):
    first = sorted(good_state(net))[0]
    return folder(tmp / "shape", rdf_for(net), claiming(first, 4, (10**5, 10**5)))


def _extra_tensor(net, tmp):
    return folder(tmp / "extra", rdf_for(net), torch_bytes(dict(good_state(net), extra=torch.zeros(1))))


def _wrong_shape(net, tmp):
    state = good_state(net)
    state[sorted(state)[0]] = torch.zeros(3, 3)
    return folder(tmp / "wrong", rdf_for(net), torch_bytes(state))


def _integer_weights(net, tmp):
    state = {k: v.to(torch.int32) for k, v in good_state(net).items()}
    return folder(tmp / "ints", rdf_for(net), torch_bytes(state))


def _nan_weights(net, tmp):
    state = good_state(net)
    state[sorted(state)[0]] = torch.full_like(state[sorted(state)[0]], float("nan"))
    return folder(tmp / "nan", rdf_for(net), torch_bytes(state))


def _junk_weights(net, tmp):
    return folder(tmp / "junk", rdf_for(net), os.urandom(4096))


def _legacy_pickle(net, tmp):
    buffer = io.BytesIO()
    torch.save(good_state(net), buffer, _use_new_zipfile_serialization=False)
    return folder(tmp / "legacy", rdf_for(net), buffer.getvalue())


def _weights_are_a_junk_pt(net, tmp):
    """The rdf points at a 50 MB junk .pt (the issue's extracted 3 GB, smaller)."""
    rdf = rdf_for(net)
    rdf["weights"]["pytorch_state_dict"]["source"] = "junk.pt"
    return zipped(tmp / "junkpt.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode(), "junk.pt": bytes(50 * MiB)})


def _zip_bomb_ratio(net, tmp):
    """Within the size limit, but it expands 1000x: only zeros do that."""
    rdf = rdf_for(net)
    rdf["weights"]["pytorch_state_dict"]["source"] = "pad.pt"
    return zipped(tmp / "ratio.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode(),
                                      "pad.pt": bytes(bmz.COMPRESSION_CHECK_BYTES + 1000)})


def _source(value):
    def build(net, tmp):
        rdf = rdf_for(net)
        rdf["weights"]["pytorch_state_dict"]["source"] = value
        return folder(tmp / "source", rdf, torch_bytes(good_state(net)))
    return build


def _weights_link_to_dev_zero(net, tmp):
    path = folder(tmp / "zero", rdf_for(net), None)
    (path / "weights.pt").symlink_to("/dev/zero")
    return path


def _weights_fifo(net, tmp):
    path = folder(tmp / "fifo", rdf_for(net), None)
    os.mkfifo(path / "weights.pt")  # opening it would block for ever
    return path


def _weights_missing(net, tmp):
    return folder(tmp / "missing", rdf_for(net), None)


def _rdf_comment_zip(net, tmp):
    """The issue's 400 MB comment, at 50 MB (about 50 kB deflated)."""
    text = huge_comment() + yaml.safe_dump(rdf_for(net)).encode()
    return zipped(tmp / "comment.zip", {"rdf.yaml": text, "weights.pt": torch_bytes(good_state(net))})


def _rdf_comment_folder(net, tmp):
    text = b"# " + b"x" * (2 * MiB) + b"\n" + yaml.safe_dump(rdf_for(net)).encode()
    return folder(tmp / "comment", text, torch_bytes(good_state(net)))


def _rdf_declared_small(net, tmp):
    text = huge_comment() + yaml.safe_dump(rdf_for(net)).encode()
    return zipped(tmp / "rdfshort.zip", {"rdf.yaml": text, "weights.pt": torch_bytes(good_state(net))},
                  declare={"rdf.yaml": 1000})


def _path_traversal(net, tmp):
    return zipped(tmp / "evil.zip", {"rdf.yaml": yaml.safe_dump(rdf_for(net)).encode(), "../weights.pt": b"x"})


def _not_a_zip(net, tmp):
    (tmp / "junk.zip").write_bytes(os.urandom(2048))
    return tmp / "junk.zip"


#: name -> (builder, words the one-line refusal must contain, whether ``info`` (which reads
#: the rdf.yaml only) refuses it too).
HOSTILE_PACKAGES = {
    "16 MB zero tensor deflated in weights.pt": (_bomb_in_weights, "more than the", False),
    "weights.pt declared 4 GB": (_declared_4gb, "4,000,000,000 bytes", False),
    "weights.pt declared 100 bytes": (_declared_small, "cannot be unpacked", False),
    "a record of weights.pt declared 4 GB": (_inner_record_4gb, "would unpack to 4,000,0", False),
    "a tensor claiming 4 GB of storage": (_claims_gigabytes, "cannot be read safely", False),
    "a tensor claiming 1e10 elements": (_claims_huge_shape, "cannot be read safely", False),
    "an extra tensor": (_extra_tensor, "unexpected extra", False),
    "a tensor of the wrong shape": (_wrong_shape, "has shape", False),
    "integer weights": (_integer_weights, "floating point", False),
    "NaN weights": (_nan_weights, "NaN", False),
    "junk weights.pt": (_junk_weights, "not a torch state dict", False),
    "legacy (non-zip) pickle": (_legacy_pickle, "not a torch state dict", False),
    "weights are a 50 MB junk .pt": (_weights_are_a_junk_pt, "more than the", False),
    "weights expand 1000x": (_zip_bomb_ratio, "expands", False),
    "weights source ../": (_source("../weights.pt"), "outside the package", False),
    "weights source absolute": (_source("/etc/passwd"), "outside the package", False),
    "weights source URL": (_source("https://example.org/weights.pt"), "outside the package", False),
    "weights link to /dev/zero": (_weights_link_to_dev_zero, "outside the package", False),
    "weights a FIFO": (_weights_fifo, "not a regular file", False),
    "weights missing": (_weights_missing, "missing", False),
    "rdf.yaml with a 50 MB comment (zip)": (_rdf_comment_zip, "rdf.yaml is 52,", True),
    "rdf.yaml with a 2 MB comment (folder)": (_rdf_comment_folder, "more than the 1,048,576", True),
    "rdf.yaml declared 1000 bytes": (_rdf_declared_small, "cannot be unpacked", True),
    "a member outside the package": (_path_traversal, "outside the package", True),
    "not a zip": (_not_a_zip, "not a readable bioimage.io package", True),
}


def _one_line(err: ShiftSegError, words: str) -> None:
    assert "\n" not in str(err) and words in str(err), str(err)


def _refused_when_read(path, words: str) -> list[ShiftSegError]:
    """Both ways a model file is read refuse it, each in one line naming ``words``."""
    errors = []
    for read in (read_metadata, load_model):
        with pytest.raises(ShiftSegError) as info:
            read(path)
        _one_line(info.value, words)
        errors.append(info.value)
    return errors


@pytest.mark.parametrize("name", list(HOSTILE_PACKAGES))
def test_hostile_packages_are_refused_with_one_line(net, tmp_path, name):
    build, words, by_info = HOSTILE_PACKAGES[name]
    path = build(net, tmp_path)
    assert disk_size(path) <= 10 * MiB  # the "small hostile input"
    with pytest.raises(ShiftSegError) as info:
        load_model(path)
    _one_line(info.value, words)
    if by_info:
        with pytest.raises(ShiftSegError) as info:
            read_metadata(path)
        _one_line(info.value, words)
    else:
        assert read_metadata(path).config == net.config  # its rdf.yaml is fine


def test_a_junk_pt_next_to_the_weights_is_never_extracted(net, tmp_path, monkeypatch):
    """The issue's junk .pt (3 GB in /tmp): only the rdf.yaml and the weights are unpacked."""
    members = {"rdf.yaml": yaml.safe_dump(rdf_for(net)).encode(), "weights.pt": torch_bytes(good_state(net)),
               "junk.pt": b"junk", "weights_torchscript.pt": b"junk"}
    path = zipped(tmp_path / "junk.zip", members, declare={"junk.pt": 3_000_000_000})
    opened = []
    original = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        if Path(str(self.filename)) == path:
            opened.append(getattr(name, "filename", name))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    assert load_model(path).config == net.config
    assert sorted(opened) == ["rdf.yaml", "weights.pt"]


# --------------------------------------------------------------------------- malformed rdf.yaml


def _edit(change):
    def build(net):
        rdf = rdf_for(net)
        change(rdf)
        return rdf
    return build


def _set(keys: str, value):
    def change(rdf):
        *parents, last = keys.split(".")
        node = rdf
        for key in parents:
            node = node[key]
        node[last] = value
    return _edit(change)


def _text(text):
    return lambda net: text


_SHIFTSEG = "config.shiftseg"
_ARCH = "weights.pytorch_state_dict.architecture"

#: name -> (rdf.yaml: a function of the net giving a dict or the file's text, words of the refusal)
MALFORMED_RDF = {
    "top level a list": (_text("- a\n- b\n"), "holds a list"),
    "top level text": (_text("just some text\n"), "holds text"),
    "empty": (_text(""), "holds nothing"),
    "not YAML": (_text("a: [b\nc: {"), "not readable YAML"),
    "not UTF-8": (_text(b"a: \xff\xfe\n"), "not readable YAML"),
    "nested 100000 deep": (_text("a: " + "[" * 100_000), "not readable YAML"),
    "a 100000-digit number": (_text("a: " + "9" * 100_000), "not readable YAML"),
    "weights missing": (_edit(lambda rdf: rdf.pop("weights")), "'weights' must be a mapping, got nothing"),
    "weights a list": (_set("weights", ["weights.pt"]), "'weights' must be a mapping, got a list"),
    "no pytorch_state_dict": (_set("weights", {"torchscript": {}}), "weights.pytorch_state_dict"),
    "config a list": (_set("config", [1, 2]), "'config' must be a mapping"),
    "config.shiftseg text": (_set(_SHIFTSEG, "yes"), "'config.shiftseg' must be a mapping, got text"),
    "settings a list": (_set(f"{_SHIFTSEG}.settings", [1.25, 7]), "'config.shiftseg.settings' must be a mapping"),
    "normalization nested": (_set(f"{_SHIFTSEG}.normalization", {"low": [1, [2]]}), "normalization"),
    "architecture text": (_set(_ARCH, "napari_shiftseg.network.bmz"), "architecture' must be a mapping"),
    "kwargs.config a number": (_set(f"{_ARCH}.kwargs.config", 3), "kwargs.config' must be a mapping"),
    "geometry a list": (_set(f"{_ARCH}.kwargs.config.geometry", [2, 2]), "'geometry' must be a mapping"),
    "levels 3.5": (_set(f"{_ARCH}.kwargs.config.geometry.levels", 3.5), "whole number"),
    "base_channels text": (_set(f"{_ARCH}.kwargs.config.base_channels", "two"), "network description"),
    "unknown network setting": (_set(f"{_ARCH}.kwargs.config.colour", "red"), "unknown model settings"),
    "source a number": (_set("weights.pytorch_state_dict.source", 42), "source' must be a file name"),
    "bandwidth text": (_set(f"{_SHIFTSEG}.settings.bandwidth", "wide"), "bandwidth"),
    "min_size a list": (_set(f"{_SHIFTSEG}.settings.min_size", [7]), "min_size"),
    "fill_holes a number": (_set(f"{_SHIFTSEG}.settings.fill_holes", 2), "fill_holes"),
    "min_size 1e30": (_set(f"{_SHIFTSEG}.settings.min_size", 1e30), "min_size 1e+30 voxels"),
    "object_diameter 1e-9": (_set(f"{_SHIFTSEG}.object_diameter", 1e-9), "object_diameter 1e-09 px"),
    "object_diameter text": (_set(f"{_SHIFTSEG}.object_diameter", "20 px"), "object_diameter '20 px'"),
    "no shiftseg entry": (_edit(lambda rdf: rdf["config"].pop("shiftseg")), "does not hold a shiftseg network"),
    "another library's network": (_set(f"{_ARCH}.import_from", "cellpose"), "does not hold a shiftseg network"),
}


@pytest.mark.parametrize("name", list(MALFORMED_RDF))
def test_malformed_rdf_is_one_line(net, tmp_path, name):
    rdf, words = MALFORMED_RDF[name]
    path = folder(tmp_path / "pkg", rdf(net), torch_bytes(good_state(net)))
    _refused_when_read(path, words)


def test_info_and_segment_refuse_a_malformed_package_with_one_line(net, tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "img.npy", np.zeros((48, 48), np.float32))
    path = folder(tmp_path / "pkg", "- a list\n", torch_bytes(good_state(net)))
    for args in (["info", str(path)], ["segment", str(tmp_path / "img.npy"), "-m", str(path), "-o",
                                       str(tmp_path / "o.zarr"), "--device", "cpu", "--quiet"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds a list" in err[0], err


# --------------------------------------------------------------------------- all of them, bounded

_BOUNDED = """
import sys
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.network.modelio import load_model, read_metadata
for arg in sys.argv[1:]:
    want, path = arg.split("=", 1)
    for read in (read_metadata, load_model):
        try:
            read(path)
        except ShiftSegError as err:
            assert "\\n" not in str(err), str(err)
            refused = True
        else:
            refused = False
        if read is load_model:
            assert refused == (want == "refuse"), (path, want)
report_peak()
"""


def test_every_hostile_package_is_refused_within_bounds(net, tmp_path):
    """The issue's bound: under 1 GB and 30 CPU s for all of them, in a fresh process."""
    args = [f"refuse={build_in(tmp_path / f'h{i}', build, net)}"
            for i, (build, _, _) in enumerate(HOSTILE_PACKAGES.values())]
    args += [f"refuse={folder(tmp_path / f'rdf{i}', rdf(net), torch_bytes(good_state(net)))}"
             for i, (rdf, _) in enumerate(MALFORMED_RDF.values())]
    junk = zipped(tmp_path / "junk.zip", {"rdf.yaml": yaml.safe_dump(rdf_for(net)).encode(),
                                          "weights.pt": torch_bytes(good_state(net)),
                                          "junk.pt": bytes(50 * MiB)})
    args.append(f"load={junk}")  # the junk .pt is never unpacked: the package loads
    result = run_bounded(_BOUNDED, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) < MEMORY_BOUND // MiB


# --------------------------------------------------------------------------- impossible settings


def write_model(path: Path, net, meta: dict) -> Path:
    """A model file as a hand edit (or damage) leaves it: save_model would refuse ``meta``."""
    save_file(good_state(net), str(path), metadata={"format": FORMAT, "config": json.dumps(net.config.to_dict()),
                                                    "meta": json.dumps(meta), "version": "0"})
    return path


#: name -> (recorded meta, words of the refusal). The tiny net is 2D: a disk twice the 20 px
#: diameter holds ball_voxels(40, 2) = 1256 pixels.
IMPOSSIBLE_SETTINGS = {
    "min_size 1e30": ({"min_size": 1e30, "object_diameter": 20.0},
                      "min_size 1e+30 voxels is larger than any nucleus of 20 px"),
    "min_size 1e30, no diameter": ({"min_size": 1e30}, "larger than any object"),
    "the default min_size, 1.5 px objects": ({"object_diameter": 1.5}, "min_size 10 voxels (the default"),
    "min_size above a disk twice the diameter": ({"min_size": 1257, "object_diameter": 20.0}, "at most 1256"),
    "min_size negative": ({"min_size": -1}, "min_size"),
    "min_size fractional": ({"min_size": 2.5}, "min_size"),
    "min_size NaN": ({"min_size": float("nan")}, "min_size"),
    "min_size text": ({"min_size": "7"}, "min_size"),
    "object_diameter 1e-9": ({"object_diameter": 1e-9}, "object_diameter 1e-09 px is smaller than one pixel"),
    "object_diameter 0": ({"object_diameter": 0}, "smaller than one pixel"),
    "object_diameter negative": ({"object_diameter": -14.0}, "smaller than one pixel"),
    "object_diameter 1e6": ({"object_diameter": 1e6}, "wider than any camera frame"),
    "object_diameter infinite": ({"object_diameter": float("inf")}, "not a number of pixels"),
    "object_diameter true": ({"object_diameter": True}, "not a number of pixels"),
    "object_diameter text": ({"object_diameter": "14"}, "not a number of pixels"),
    "bandwidth 0": ({"bandwidth": 0}, "bandwidth"),
    "bandwidth infinite": ({"bandwidth": float("inf")}, "bandwidth"),
    "merge_distance negative": ({"merge_distance": -1.0}, "merge_distance"),
    "merge_distance NaN": ({"merge_distance": float("nan")}, "merge_distance"),
    "fg_threshold 1.5": ({"fg_threshold": 1.5}, "fg_threshold"),
}


@pytest.mark.parametrize("name", list(IMPOSSIBLE_SETTINGS))
def test_impossible_recorded_settings_are_refused_when_loaded(net, tmp_path, name):
    meta, words = IMPOSSIBLE_SETTINGS[name]
    path = write_model(tmp_path / "m.safetensors", net, meta)
    for err in _refused_when_read(path, words):
        assert "m.safetensors records an impossible setting" in str(err) or "unreadable" in str(err)


@pytest.mark.parametrize("name", list(IMPOSSIBLE_SETTINGS))
def test_impossible_settings_are_never_saved(net, tmp_path, name):
    meta, words = IMPOSSIBLE_SETTINGS[name]
    with pytest.raises(ShiftSegError) as info:
        save_model(Model(net, dict(meta)), tmp_path / "m.safetensors")
    _one_line(info.value, "not saving m.safetensors: ")
    assert words in str(info.value)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("name", ["min_size 1e30", "object_diameter 1e-9"])
def test_impossible_settings_in_a_package_are_refused(net, tmp_path, name):
    meta, words = IMPOSSIBLE_SETTINGS[name]
    rdf = rdf_for(net, object_diameter=meta.get("object_diameter", 20.0))
    rdf["config"]["shiftseg"]["settings"].update({k: v for k, v in meta.items() if k != "object_diameter"})
    path = zipped(tmp_path / "pkg.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode(),
                                         "weights.pt": torch_bytes(good_state(net))})
    _refused_when_read(path, words)


def test_segment_and_info_refuse_impossible_settings_with_one_line(net, tmp_path, capsys):
    """The issue's silent empty result: rc 0 and 0 objects; now rc 2 before anything runs."""
    import numpy as np

    np.save(tmp_path / "img.npy", np.zeros((48, 48), np.float32))
    for meta in ({"min_size": 1e30, "object_diameter": 14.0}, {"object_diameter": 1e-9}):
        path = write_model(tmp_path / "m.safetensors", net, meta)
        out = tmp_path / "o.zarr"
        for args in (["info", str(path)], ["segment", str(tmp_path / "img.npy"), "-m", str(path), "-o", str(out),
                                           "--device", "cpu", "--quiet"]):
            assert main(args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "impossible setting" in err[0], err
        assert not out.exists()


def test_settings_at_the_limits_load(net, tmp_path):
    limit = ball_voxels(2 * 20.0, 2)
    for meta in ({"min_size": limit, "object_diameter": 20.0}, {"object_diameter": 1.0, "min_size": 3},
                 {"object_diameter": MAX_OBJECT_DIAMETER}, {"min_size": 0}):
        path = save_model(Model(net, dict(meta)), tmp_path / "m.safetensors")
        assert load_model(path).meta == meta


@pytest.mark.parametrize("kind", ["nuclei", "disks"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_bundled_models_keep_far_inside_the_limits(kind, ndim):
    meta = read_metadata(bundled_model_path(ndim, kind)).meta
    diameter = meta.get("object_diameter") or MAX_OBJECT_DIAMETER
    assert meta["min_size"] <= 0.05 * ball_voxels(2 * diameter, ndim)
