"""bioimage.io model packages: export a shiftseg model, and read one back.

The package holds the *network* (what deepImageJ, ilastik or bioimageio.core can run):

- ``pytorch_state_dict`` weights (built by :func:`build_network` from the config stored as its
  architecture's kwargs) and the same network as ``torchscript``;
- one input ``raw`` (batch, channel, spatial axes) whose spatial sizes are declared as
  ``min + n·step`` with ``step`` = the grid period F_a of each axis and ``min`` the smallest
  valid input, so every size a spec-honouring tool picks is one the valid-convolution U-Net
  accepts; the output's spatial sizes are ``raw``'s minus the context (a ``SizeReference``
  with a negative offset), i.e. the output covers the centre of the input;
- the model's normalisation as ``scale_range`` preprocessing (the same percentiles, over the
  whole image);
- test tensors, a cover, a README and the paper's citation;
- shiftseg's own settings under ``config["shiftseg"]`` (bandwidth, thresholds, object size,
  and for spatial heads the position scale that is added to the first channels *after*
  stitching, in global coordinates: tools that only run the network get the offsets).

:func:`load_package` reads such a package back as a :class:`~napari_shiftseg.network.modelio.Model`
(``torch.load(weights_only=True)``: loading never executes code), so ``shiftseg segment -m
PACKAGE`` accepts it. Reading is bounded whatever the package holds (issue 25): the rdf.yaml is
refused above :data:`MAX_RDF_BYTES` before it is parsed and its structure is checked field by
field; only the weights file is unpacked, refused from the zip's declared sizes above what its
network needs (:func:`weights_budget`), and memory-mapped, its tensor names and shapes checked
before any is copied; the recorded settings must be able to give a result
(:func:`napari_shiftseg.network.modelio.check_recorded_settings`). Exporting needs ``bioimageio.spec``
(``pip install bioimageio.core``); reading needs only PyYAML.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import stat
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..util._errors import ShiftSegError
from .model import Model, ModelInfo, expected_shapes, refuse_impossible_settings
from .unet import UNet, UNetConfig

#: The paper's code, as cited in the package.
CITATION = ("Rumberger, Yu, Hirsch, Dohmen, Guarino, Mosayebi, Bui, Plüddemann, Kainmüller: How "
            "Shift Equivariance Impacts Metric Learning for Instance Segmentation (ICCV 2021)")
CITATION_URL = "https://github.com/Kainmueller-Lab/shift_equivariance_unet"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
AXIS_IDS = {2: ("y", "x"), 3: ("z", "y", "x")}
#: Where a package's ``build_network`` is imported from: written now, then the name packages
#: exported before the subpackage layout (0.1) carry, which still load.
ARCHITECTURE_MODULES = ("napari_shiftseg.network.bmz", "napari_shiftseg.bmz")


def build_network(config: dict) -> UNet:
    """The architecture callable of an exported package: the U-Net of a stored config."""
    return UNet(UNetConfig.from_dict(config))


def _channel_names(config: UNetConfig) -> list[str]:
    d = config.geometry.ndim
    names = [f"offset_{a}" for a in AXIS_IDS[d]] if config.embedding == "spatial" else []
    names += [f"embedding_{i}" for i in range(config.embed_dim - len(names))]
    return names + (["foreground_logit"] if config.foreground_head else [])


def _test_input(model, rng) -> np.ndarray:
    """A synthetic nuclei image of a valid input size (a few grid cells past the minimum)."""
    from ..synthetic import synth

    g = model.geometry
    size = tuple(a.nearest_valid_input(a.min_input_size + 2 * a.grid) for a in g.axes)
    image, _ = synth.nuclei(size, seed=int(rng.integers(1_000_000)))
    channels = model.config.in_channels
    return np.stack([image] * channels)[None].astype(np.float32)  # (1, C, *size)


def _cover(image: np.ndarray, output: np.ndarray, path: Path) -> None:
    """Input and the first three output channels side by side (the centre plane in 3D)."""
    import imageio.v3 as iio

    def plane(a):
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    def to_uint8(a):
        lo, hi = np.percentile(a, [1, 99])
        return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    raw = plane(image[0, 0])
    out = np.stack([to_uint8(plane(output[0, c])) for c in range(min(3, output.shape[1]))], -1)
    if out.shape[-1] < 3:
        out = np.concatenate([out] + [out[..., :1]] * (3 - out.shape[-1]), -1)
    pad = [((raw.shape[0] - out.shape[0]) // 2,) * 2, ((raw.shape[1] - out.shape[1]) // 2,) * 2, (0, 0)]
    out = np.pad(out, pad)
    left = np.repeat(to_uint8(raw)[..., None], 3, -1)
    side = np.concatenate([left, out[:left.shape[0], :left.shape[1]]], axis=1)
    scale = max(1, 256 // side.shape[0])  # covers are shown at a few hundred pixels
    iio.imwrite(path, np.kron(side, np.ones((scale, scale, 1), np.uint8)))


def export_package(model, out_dir, *, name: str | None = None, seed: int = 0) -> Path:
    """Write ``model`` as a bioimage.io package folder ``out_dir``; returns its rdf.yaml path.

    The description is validated by ``bioimageio.spec`` while it is built (a ShiftSegError says
    what it refused).
    """
    try:
        from bioimageio.spec import save_bioimageio_package_as_folder
        from bioimageio.spec.model import v0_5 as spec
    except ImportError:
        raise ShiftSegError("exporting a bioimage.io package needs bioimageio.spec: "
                            "pip install bioimageio.core") from None
    from ..imaging.normalize import recorded_normalization, recorded_percentiles
    from .settings import SegmentationSettings

    if not isinstance(model, Model):
        raise ShiftSegError("export a loaded model (napari_shiftseg.network.modelio.load_model)")
    config, g = model.config, model.geometry
    if not g.valid:
        raise ShiftSegError("only valid-convolution models can be exported (same padding has no "
                            "exact tiling to declare)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ShiftSegError(f"{out_dir} exists and is not empty; choose a new folder")
    net = model.net.eval().cpu()
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        x = _test_input(model, rng)
        # The same normalisation inference applies (percentiles of the whole image, per channel).
        norm = recorded_normalization(x[0], model.meta, model.name, channels_first=True)
        with torch.no_grad():
            y = net(torch.from_numpy(np.asarray(norm(x[0]), np.float32)[None])).numpy()
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        torch.save(net.state_dict(), tmp / "weights.pt")
        # bioimage.io runs TorchScript (not torch.export). Tracing records the size checks of
        # UNet.forward as constants (TracerWarnings) but every layer stays size-generic: the
        # traced net runs any valid input size (tests/test_bmz.py).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(net, torch.from_numpy(np.asarray(norm(x[0]), np.float32)[None]),
                                       check_trace=False)
            scripted.save(str(tmp / "weights_torchscript.pt"))
        _cover(x, y, tmp / "cover.png")
        settings = SegmentationSettings.of(model)
        shiftseg = {"settings": settings.to_meta(), "object_diameter": model.meta.get("object_diameter"),
                    "embedding": config.embedding, "position_scale": config.position_scale,
                    "normalization": model.meta.get("normalization"),
                    "geometry": {"grid": list(g.grids), "context": list(g.contexts),
                                 "factors": [list(r) for r in g.factors] if g.factors else None},
                    "model_name": model.name}
        (tmp / "README.md").write_text(_readme(model, shiftseg), encoding="utf-8")
        low, high = recorded_percentiles(model.meta, model.name)  # what inference applies
        # bioimageio.spec's own id / version types (what validation turns the plain strings into)
        spatial_ids = [spec.AxisId(a) for a in AXIS_IDS[g.ndim]]
        raw_id, embeddings_id = spec.TensorId("raw"), spec.TensorId("embeddings")
        in_axes: list[spec.InputAxis] = [
            spec.BatchAxis(), spec.ChannelAxis(channel_names=[f"channel{c}" for c in range(config.in_channels)])]
        in_axes += [spec.SpaceInputAxis(id=a, size=spec.ParameterizedSize(min=ax.min_input_size, step=ax.grid))
                    for a, ax in zip(spatial_ids, g.axes)]
        out_axes: list[spec.OutputAxis] = [
            spec.BatchAxis(), spec.ChannelAxis(channel_names=_channel_names(config))]
        out_axes += [spec.SpaceOutputAxis(id=a, size=spec.SizeReference(tensor_id=raw_id, axis_id=a,
                                                                      offset=-ax.context))
                     for a, ax in zip(spatial_ids, g.axes)]
        preprocessing: list[spec.PreprocessingDescr] = [spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
            axes=spatial_ids, min_percentile=float(low), max_percentile=float(high)))]
        arch = spec.ArchitectureFromLibraryDescr(import_from=ARCHITECTURE_MODULES[0],
                                                 callable=spec.Identifier("build_network"),
                                                 kwargs={"config": json.loads(json.dumps(config.to_dict()))})
        version = spec.Version(torch.__version__.split("+")[0])
        descr = spec.ModelDescr(
            name=_safe_name(name or f"shiftseg {Path(model.name).stem}"),
            description=("Valid-convolution U-Net for instance segmentation by metric learning "
                         "(napari-shiftseg): exact tile-and-stitch on the f^l grid"),
            authors=[spec.Author(name="napari-shiftseg")],
            cite=[spec.CiteEntry(text=CITATION, url=spec.HttpUrl(CITATION_URL))],
            license=spec.LicenseId("BSD-3-Clause"),
            documentation=spec.FileDescr(source=tmp / "README.md"),
            covers=[spec.FileDescr(source=tmp / "cover.png")],
            tags=["instance-segmentation", "metric-learning", "nuclei", f"{g.ndim}d", "pytorch"],
            inputs=[spec.InputTensorDescr(id=raw_id, axes=in_axes, preprocessing=preprocessing,
                                          test_tensor=spec.FileDescr(source=tmp / "test_input.npy"))],
            outputs=[spec.OutputTensorDescr(id=embeddings_id, axes=out_axes,
                                            test_tensor=spec.FileDescr(source=tmp / "test_output.npy"))],
            weights=spec.WeightsDescr(
                pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                    source=tmp / "weights.pt", architecture=arch, pytorch_version=version),
                torchscript=spec.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt",
                                                         pytorch_version=version, parent="pytorch_state_dict")),
            config=spec.Config.model_validate({"shiftseg": json.loads(json.dumps(shiftseg))}),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # bioimageio.spec leaves the files it hashed open; close them before ``tmp`` goes.
            warnings.simplefilter("ignore", ResourceWarning)
            save_bioimageio_package_as_folder(descr, output_path=out_dir)
            del descr
            gc.collect()
    return next(out_dir / n for n in RDF_NAMES if (out_dir / n).exists())


def _safe_name(text: str) -> str:
    """A package name bioimage.io accepts (letters, digits, ``_+- ()``)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    return "".join(c if c in allowed else "-" for c in text)[:128]


def _readme(model, shiftseg: dict) -> str:
    g = model.geometry
    return f"""# {model.name} (napari-shiftseg)

A valid-convolution U-Net that maps every pixel to an embedding; mean-shift clustering of the
embeddings gives instances. Exported by napari-shiftseg.

- Input `raw`: sizes `min + n·step` per spatial axis (step = grid period {list(g.grids)}); the
  output `embeddings` is the centre of the input, smaller by the context {list(g.contexts)}.
- Tiling: output tiles that are multiples of the grid, with inputs on the global grid, stitch
  into exactly the whole-image result (Rumberger et al., ICCV 2021).
- Channels: {", ".join(_channel_names(model.config))}.
""" + ("""- Spatial head: the first channels are offsets; napari-shiftseg adds the global voxel position
  times the position scale ({scale}) after stitching, then clusters. Tools that only run the
  network get the offsets.
""".format(scale=shiftseg["position_scale"]) if model.config.embedding == "spatial" else "") + """
Segmentation settings (bandwidth, thresholds) are under `config.shiftseg` in the RDF.
"""


def is_package(path) -> bool:
    path = Path(path)
    return (path.is_dir() and any((path / n).is_file() for n in RDF_NAMES)) or \
        (path.is_file() and path.suffix.lower() == ".zip")


#: Largest rdf.yaml read (bytes). An exported one is a few kB; 1 MiB leaves room for long
#: descriptions and parses in well under a second (a 400 MB comment made ``info`` hang).
MAX_RDF_BYTES = 1 << 20
#: Bytes of weights.pt beyond its tensors' own: torch's pickle of names and shapes, zip headers
#: and 64-byte alignment (a few hundred bytes per tensor; a U-Net has under 200 tensors).
WEIGHTS_OVERHEAD = 1 << 20
#: Bytes per weight allowed in weights.pt (float64, the widest floating type; exports are float32).
WEIGHT_BYTES = 8
#: Never extracts (or maps) more than this from a package, whatever its network declares: a
#: junk .pt once filled /tmp with 3 GB. A network of MAX_PARAMETERS float32 weights (800 MB) fits.
MAX_EXTRACT_BYTES = 1 << 30
#: A zip member over COMPRESSION_CHECK_BYTES that expands more than this ratio is refused: float
#: weights hardly compress (~1.1x), only a bomb of zeros expands 100x.
MAX_COMPRESSION_RATIO = 100
#: Smaller members are not ratio-checked: a few kB of YAML or zero biases may compress well, and
#: the size limits bound what they can cost.
COMPRESSION_CHECK_BYTES = 1 << 20
#: Copy chunk when extracting (bytes).
_CHUNK = 1 << 20


def _malformed(path: Path, what: str) -> ShiftSegError:
    return ShiftSegError(f"{path.name}: its rdf.yaml is malformed ({what}); export the package again")


def _kind(value) -> str:
    """What a YAML value is, in words."""
    return {dict: "a mapping", list: "a list", str: "text", type(None): "nothing", bool: "true or false",
            int: "a number", float: "a number"}.get(type(value), f"a {type(value).__name__}")


def _mapping(path: Path, parent: dict, key: str, where: str, required: bool = True) -> dict:
    """``parent[key]`` as a mapping; a one-line error naming ``where`` when it is not one."""
    value = parent.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _malformed(path, f"'{where}' must be a mapping, got {_kind(value)}")
    return value


def _parse_rdf(path: Path, text: bytes) -> dict:
    """The rdf.yaml's top-level mapping, read by YAML's safe loader (no Python objects are built).

    libyaml's version of it where installed: 5x faster on a 1 MiB file, and it refuses nesting
    deeper than 1000 levels where the pure-Python one recurses (a RecursionError, caught)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        rdf = yaml.load(text.decode("utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise ShiftSegError(f"{path.name}: its rdf.yaml is not readable YAML") from None
    if not isinstance(rdf, dict):
        raise _malformed(path, f"the file holds {_kind(rdf)}, not a mapping of fields")
    return rdf


def _settings(path: Path, ours: dict) -> dict:
    """shiftseg's recorded settings (known names only; the values are checked by modelio)."""
    from .settings import SegmentationSettings

    settings = _mapping(path, ours, "settings", "config.shiftseg.settings", required=False)
    known = {f.name for f in dataclasses.fields(SegmentationSettings)}
    normalization = _mapping(path, ours, "normalization", "config.shiftseg.normalization", required=False)
    if not all(v is None or isinstance(v, (str, int, float)) for v in normalization.values()):
        raise _malformed(path, "'config.shiftseg.normalization' must hold plain values")
    meta = {**{k: v for k, v in settings.items() if k in known}, "normalization": normalization or None,
            "object_diameter": ours.get("object_diameter"), "bioimageio_package": str(path)}
    return {k: v for k, v in meta.items() if v is not None}


def _foreign(path: Path) -> ShiftSegError:
    return ShiftSegError(f"{path.name} is a bioimage.io package but does not hold a shiftseg network; "
                         "use it with bioimageio.core")


def _network(path: Path, rdf: dict) -> tuple[UNetConfig, str]:
    """(network config, weights file name) from the rdf's ``weights.pytorch_state_dict``."""
    where = "weights.pytorch_state_dict"
    weights = _mapping(path, _mapping(path, rdf, "weights", "weights"), "pytorch_state_dict", where)
    arch = _mapping(path, weights, "architecture", f"{where}.architecture")
    if arch.get("import_from") not in ARCHITECTURE_MODULES:
        raise _foreign(path)
    kwargs = _mapping(path, arch, "kwargs", f"{where}.architecture.kwargs")
    data = _mapping(path, kwargs, "config", f"{where}.architecture.kwargs.config")
    if not isinstance(data.get("geometry"), dict):
        raise _malformed(path, f"the network's 'geometry' must be a mapping, got {_kind(data.get('geometry'))}")
    try:
        config = UNetConfig.from_dict(data)
    except ShiftSegError as err:
        raise ShiftSegError(f"{path.name}: its network description is invalid: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, OverflowError):
        raise ShiftSegError(f"{path.name}: its network description is incomplete") from None
    source = weights.get("source")
    if not isinstance(source, str) or not source:
        raise _malformed(path, f"'{where}.source' must be a file name, got {_kind(source)}")
    return config, source


def _describe(path: Path, rdf: dict) -> tuple[UNetConfig, dict, str]:
    """(config, meta, weights file name) of a package's rdf, each part's structure checked and
    the recorded settings refused where they cannot give a result."""

    ours = _mapping(path, rdf, "config", "config", required=False).get("shiftseg")
    if ours is None:
        raise _foreign(path)
    if not isinstance(ours, dict):
        raise _malformed(path, f"'config.shiftseg' must be a mapping, got {_kind(ours)}")
    config, source = _network(path, rdf)
    meta = _settings(path, ours)
    refuse_impossible_settings(meta, config.geometry.ndim, path.name)
    return config, meta, source


def _inside(path: Path, name: str) -> str:
    """``name`` as a plain relative path inside the package (never a URL, absolute or ``..``)."""
    parts = PurePosixPath(name).parts
    if "://" in name or not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ShiftSegError(f"{path.name} names a file outside the package ({name})")
    return "/".join(parts)


def _regular_size(path: Path, file: Path, what: str) -> int:
    """Size of ``file``, a regular file (never opening a FIFO or a device)."""
    try:
        info = file.stat()
    except OSError:
        raise ShiftSegError(f"{path.name}: its {what} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ShiftSegError(f"{path.name}: its {what} is not a regular file")
    return info.st_size


def _too_big(path: Path, what: str, size: int, limit: int) -> ShiftSegError:
    return ShiftSegError(f"{path.name}: its {what} is {size:,} bytes, more than the {limit:,} it "
                         "can hold; the package is damaged or not a shiftseg export")


def weights_budget(config: UNetConfig) -> int:
    """Most bytes the weights file of a network with ``config`` may have
    (:data:`WEIGHT_BYTES` per weight plus :data:`WEIGHTS_OVERHEAD`, at most :data:`MAX_EXTRACT_BYTES`)."""

    weights = sum(math.prod(shape) for shape in expected_shapes(config).values())
    return min(WEIGHT_BYTES * weights + WEIGHTS_OVERHEAD, MAX_EXTRACT_BYTES)


class _Package:
    """A package folder or .zip, read with bounded sizes: nothing larger than its limit is
    read, extracted or allocated."""

    def __init__(self, path: Path):
        self.path = path
        self.archive: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self.archive = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
                raise ShiftSegError(f"{path.name} is not a readable bioimage.io package (.zip)") from None
            for name in self.archive.namelist():  # never extracted, but a sign of a hostile zip
                if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                    self.archive.close()
                    raise ShiftSegError(f"{path.name} holds a file outside the package ({name})")
        elif not path.is_dir():
            raise ShiftSegError(f"{path.name} is neither a package folder nor a .zip file")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.archive is not None:
            self.archive.close()

    def _member(self, name: str, what: str, limit: int) -> zipfile.ZipInfo:
        assert self.archive is not None
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise ShiftSegError(f"{self.path.name}: its {what} is missing") from None
        if info.file_size > limit:  # the central directory's size, before anything is read
            raise _too_big(self.path, what, info.file_size, limit)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > COMPRESSION_CHECK_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise ShiftSegError(f"{self.path.name}: its {what} expands {ratio:.0f} times when unpacked "
                                "(a zip bomb?); the package is damaged")
        return info

    def rdf_text(self) -> bytes:
        """The rdf.yaml's bytes, refused above :data:`MAX_RDF_BYTES` before it is read."""
        if self.archive is not None:
            names = set(self.archive.namelist())
            name = next((n for n in RDF_NAMES if n in names), None)
            if name is None:
                raise ShiftSegError(f"{self.path.name} has no rdf.yaml: not a bioimage.io package")
            info = self._member(name, "rdf.yaml", MAX_RDF_BYTES)
            with self.archive.open(info) as stream:
                return self._bounded(stream, "rdf.yaml", MAX_RDF_BYTES)
        file = next((self.path / n for n in RDF_NAMES if (self.path / n).exists()), None)
        if file is None:
            raise ShiftSegError(f"{self.path.name} has no rdf.yaml: not a bioimage.io package")
        size = _regular_size(self.path, file, "rdf.yaml")
        if size > MAX_RDF_BYTES:
            raise _too_big(self.path, "rdf.yaml", size, MAX_RDF_BYTES)
        with open(file, "rb") as stream:
            return self._bounded(stream, "rdf.yaml", MAX_RDF_BYTES)

    def _bounded(self, stream, what: str, limit: int) -> bytes:
        try:
            data = stream.read(limit + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
            raise ShiftSegError(f"{self.path.name}: its {what} cannot be unpacked (damaged package)") from None
        if len(data) > limit:
            raise _too_big(self.path, what, len(data), limit)
        return data

    def weights_file(self, source: str, tmp: Path, limit: int) -> Path:
        """The weights file on disk, at most ``limit`` bytes (a .zip's is extracted to ``tmp``,
        stopping at ``limit`` whatever its header declared)."""
        name = _inside(self.path, source)
        what = f"weights file {source!r}"
        if self.archive is None:
            file = self.path / name
            if self.path.resolve() not in file.resolve().parents:  # e.g. a link to /dev/zero
                raise ShiftSegError(f"{self.path.name} names a file outside the package ({source})")
            size = _regular_size(self.path, file, what)
            if size > limit:
                raise _too_big(self.path, what, size, limit)
            return file
        info = self._member(name, what, limit)
        target = tmp / "weights.pt"
        copied = 0
        try:
            with self.archive.open(info) as stream, open(target, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    copied += len(chunk)
                    if copied > limit:
                        raise _too_big(self.path, what, copied, limit)
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError):
            raise ShiftSegError(f"{self.path.name}: its {what} cannot be unpacked (damaged package)") from None
        return target


def _read(path: Path):
    """(config, meta, weights source) of a package folder or .zip; the rdf.yaml is read within
    :data:`MAX_RDF_BYTES` and its structure checked."""
    with _Package(path) as package:
        return _describe(path, _parse_rdf(path, package.rdf_text()))


def read_package_metadata(path):
    """The :class:`~napari_shiftseg.network.modelio.ModelInfo` of a package, as
    :func:`napari_shiftseg.network.modelio.read_metadata` gives for a model file."""

    path = Path(path)
    config, meta, _ = _read(path)
    return ModelInfo(config, meta, None, path.name)


def _check_torch_file(path: Path, file: Path, limit: int) -> None:
    """A torch weights file is a zip; every record's declared size (what torch would allocate
    for it) is summed and refused above ``limit`` before torch reads it."""
    try:
        with zipfile.ZipFile(file) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError):
        raise ShiftSegError(f"{path.name}: the weights file is not a torch state dict (.pt)") from None
    if declared > limit:
        raise ShiftSegError(f"{path.name}: its weights file would unpack to {declared:,} bytes, more than the "
                            f"{limit:,} its network can hold; the package is damaged or not a shiftseg export")


def _check_state(path: Path, state, config: UNetConfig) -> None:
    """Names, shapes and types of the tensors against the config (mapped, not yet read)."""

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ShiftSegError(f"{path.name}: the weights file is not a state dict of tensors")
    expected = expected_shapes(config)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected), key=str)
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(map(str, unexpected[:3]))}"] if unexpected else [])
        raise ShiftSegError(f"{path.name}: the weights do not fit the network ({'; '.join(parts)})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise ShiftSegError(f"{path.name}: the weights do not fit the network ({name} has shape "
                                f"{tuple(tensor.shape)}, the network needs {expected[name]})")
        if not tensor.is_floating_point():
            raise ShiftSegError(f"{path.name}: weight {name} has type {tensor.dtype}; weights must be "
                                "floating point")


def _load_state(path: Path, file: Path, config: UNetConfig, limit: int) -> dict:
    """The state dict of ``file``, memory-mapped (no storage is allocated) and checked."""
    _check_torch_file(path, file, limit)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure: a corrupt or hostile file
        raise ShiftSegError(f"{path.name}: the weights cannot be read safely ({type(err).__name__})") from None
    _check_state(path, state, config)
    if not all(bool(torch.isfinite(v).all()) for v in state.values()):
        raise ShiftSegError(f"{path.name}: the weights contain NaN or infinite values")
    return state


def load_package(path, device="cpu"):
    """A shiftseg model from a bioimage.io package folder or .zip written by :func:`export_package`
    (``torch.load(weights_only=True)``: no code from the package runs).

    Bounded whatever the package holds: the rdf.yaml is read only up to :data:`MAX_RDF_BYTES`,
    only the weights file is extracted, and only up to :func:`weights_budget` of the network
    the rdf describes; its tensors are memory-mapped and checked against the network's names
    and shapes before anything is copied."""

    path = Path(path)
    with _Package(path) as package:
        config, meta, source = _describe(path, _parse_rdf(path, package.rdf_text()))
        limit = weights_budget(config)
        with tempfile.TemporaryDirectory() as tmp:
            state = _load_state(path, package.weights_file(source, Path(tmp), limit), config, limit)
            net = UNet(config)
            try:
                net.load_state_dict(state, strict=True)
            except (RuntimeError, TypeError) as err:
                raise ShiftSegError(f"{path.name}: the weights do not fit the network ({str(err)[:200]})") from None
            del state
    return Model(net.to(device).eval(), meta, path)
