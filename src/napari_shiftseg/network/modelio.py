"""Model files: one ``.safetensors`` file with the weights and, in its metadata, the config.

safetensors never unpickles anything, so opening a hostile file cannot execute code. Pickle and
torch checkpoints are refused by their first bytes with a message that says why.
"""

from __future__ import annotations

import json
import stat
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..util._errors import ShiftSegError
from . import bmz

# What a model is and which settings it may record; re-exported: callers import them from here.
from .model import (  # noqa: F401
    MAX_OBJECT_DIAMETER,
    MIN_OBJECT_DIAMETER,
    MIN_SIZE_DIAMETERS,
    Model,
    ModelInfo,
    _short,
    ball_voxels,
    check_recorded_settings,
    expected_shapes,
    refuse_impossible_settings,
)
from .unet import UNet, UNetConfig

FORMAT = "napari-shiftseg/1"
#: Bundled models by kind and dimensionality. ``nuclei`` (the default) are general fluorescence
#: nuclei models; ``disks`` are the paper's synthetic disk/sphere models, kept for the
#: demonstrations of shift equivariance, capacity and training windows (docs/MODELS.md).
BUNDLED_KINDS = {
    "nuclei": {2: "default_2d.safetensors", 3: "default_3d.safetensors"},
    "disks": {2: "disks_2d.safetensors", 3: "disks_3d.safetensors"},
}
BUNDLED = BUNDLED_KINDS["nuclei"]


def save_model(model: Model | UNet, path, meta: dict | None = None) -> Path:
    """Write weights + config (+ ``meta``: normalisation, training window, metrics) to ``path``.

    Recorded settings that cannot give a result are refused (:func:`check_recorded_settings`)."""
    if isinstance(model, UNet):
        model = Model(model, dict(meta or {}))
    elif meta:
        model.meta.update(meta)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ShiftSegError(f"model files must end in .safetensors, got {path.name}")
    try:
        check_recorded_settings(model.meta, model.config.geometry.ndim)
    except ShiftSegError as err:
        raise ShiftSegError(f"not saving {path.name}: {err}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "meta": json.dumps(model.meta),
        "version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: a crash never leaves a half-written model under the real name
    return path


def _why_unreadable(path: Path) -> str:
    """Explain a file safetensors could not parse (looked at only after parsing failed: a valid
    header length may well start with the byte that also starts a pickle). Reads 9 bytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
        size = path.stat().st_size
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    if len(head) == 9 and head[8:9] == b"{":
        # A safetensors file: 8-byte little-endian header length, then the JSON header.
        length = int.from_bytes(head[:8], "little")
        if 8 + length > size:
            return (f"{path.name} is a truncated model file (its header alone needs {8 + length} "
                    f"bytes, the file has {size}); copy or download it again")
        return (f"{path.name} is a corrupt or truncated model file (its weights do not match its "
                "header); copy or download it again")
    if head[:2] == b"PK" or (head[:1] == b"\x80" and len(head) > 1 and 1 <= head[1] <= 5):
        return (f"{path.name} is a pickle/torch checkpoint; shiftseg only opens .safetensors model "
                "files because pickle files can run code when loaded")
    kind = next((name for magic, name in _IMAGE_MAGIC if head.startswith(magic)), None)
    if kind is not None:
        return (f"{path.name} is a {kind} image, not a model file (models are .safetensors "
                f"files); to segment it: shiftseg segment {path.name}")
    return f"{path.name} is corrupt or truncated, not a shiftseg model file"


#: Leading bytes of image files a user may hand over where a model is expected.
_IMAGE_MAGIC = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"),
                (b"MM\x00+", "BigTIFF"), (b"\x93NUMPY", "NumPy (.npy)"), (b"\x89PNG", "PNG"),
                (b"\xff\xd8\xff", "JPEG"))


def _check_regular_file(path: Path) -> None:
    """Refuse what is not a readable regular file (never opening a FIFO or a device)."""
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except FileNotFoundError:
        if path.is_symlink():
            raise ShiftSegError(f"model file {path} is a broken symbolic link") from None
        raise ShiftSegError(f"model file {path} does not exist") from None
    except OSError as err:
        raise ShiftSegError(f"model file {path} cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise ShiftSegError(f"model file {path} is a directory; give the .safetensors file in it")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        link = " (through a symbolic link)" if path.is_symlink() else ""
        raise ShiftSegError(f"model file {path} is {kind}{link}, not a model file")


def _parse_metadata(metadata: dict, name: str):
    """(config, meta) from a model file's metadata strings; ShiftSegError for anything malformed."""
    try:
        data = json.loads(metadata["config"])
        if not isinstance(data, dict) or not isinstance(data.get("geometry"), dict):
            raise ShiftSegError("the configuration is not a dictionary with a 'geometry' entry")
        config = UNetConfig.from_dict(data)
        meta = json.loads(metadata.get("meta", "{}"))
        if not isinstance(meta, dict):
            raise ShiftSegError(f"its 'meta' entry must be a dictionary, got {type(meta).__name__}")
    except ShiftSegError as err:
        raise ShiftSegError(f"{name} has an invalid model configuration: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        raise ShiftSegError(f"{name} has an unreadable model configuration ({_short(err)})") from None
    # The recorded segmentation settings (bandwidth, min_size, ...) are checked now, not when a
    # run is half way (or has ended with nothing).
    refuse_impossible_settings(meta, config.geometry.ndim, name)
    return config, meta


def read_metadata(path) -> ModelInfo:
    """The metadata of a model file (config, meta, version), validated, without weights.

    The config is bounds-checked (:class:`~napari_shiftseg.network.unet.UNetConfig`), which refuses a
    network too large to build before anything is allocated.
    """
    from safetensors import safe_open

    path = Path(path)
    if bmz.is_package(path):  # a bioimage.io package exported by shiftseg (bmz.py)
        return bmz.read_package_metadata(path)
    _check_regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except PermissionError:
        raise ShiftSegError(f"no permission to read the model file {path}") from None
    except (SafetensorError, OSError, ValueError):
        raise ShiftSegError(_why_unreadable(path)) from None
    if metadata.get("format") != FORMAT:
        raise ShiftSegError(f"{path.name} is a safetensors file but not a shiftseg model (no '{FORMAT}' metadata)")
    config, meta = _parse_metadata(metadata, path.name)
    return ModelInfo(config, meta, metadata.get("version"), path.name)


def _check_tensors(path: Path, config: UNetConfig) -> None:
    """Tensor names, shapes and types against the config, from the header only."""
    from safetensors import safe_open

    expected = expected_shapes(config)
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or unexpected:
            detail = "; ".join(part for part in (
                f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
                if unexpected else "") if part)
            raise ShiftSegError(f"{path.name}: weights do not match its configuration ({detail})")
        for name in sorted(names):
            piece = f.get_slice(name)
            shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
            if shape != expected[name]:
                raise ShiftSegError(f"{path.name}: weights do not match its configuration ({name} has "
                                    f"shape {shape}, the configuration needs {expected[name]})")
            if dtype not in ("F16", "BF16", "F32", "F64"):
                raise ShiftSegError(f"{path.name}: weight {name} has type {dtype}; weights must be "
                                    "floating point")


def load_model(path, device: str | torch.device = "cpu") -> Model:
    """Load and validate a model file; never executes code from the file.

    Validated before the weights are read: the file is a regular file, the config is within
    bounds (size estimated, not allocated), and every tensor's name and shape matches it. The
    weights must then be finite.
    """
    path = Path(path)
    if bmz.is_package(path):  # a bioimage.io package exported by shiftseg (bmz.py)
        return bmz.load_package(path, device)
    info = read_metadata(path)
    try:
        _check_tensors(path, info.config)
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, ShiftSegError):
            raise
        raise ShiftSegError(f"{path.name} is corrupt or truncated ({_short(err)})") from None
    for name, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ShiftSegError(f"{path.name}: weight {name} contains NaN or infinite values; the "
                                "model is broken (training diverged?), use another model file")
    net = UNet(info.config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ShiftSegError(f"{path.name}: weights do not match its configuration ({first})") from None
    net.eval().to(device)
    return Model(net, info.meta, path)


def bundled_model_path(ndim: int, kind: str = "nuclei") -> Path:
    """Path of a model shipped inside the package (``kind``: "nuclei" default, or "disks")."""
    if kind not in BUNDLED_KINDS:
        raise ShiftSegError(f"there is no bundled {kind!r} model; choose one of {sorted(BUNDLED_KINDS)}")
    if ndim not in BUNDLED_KINDS[kind]:
        raise ShiftSegError(f"there is no bundled model for {ndim}D images (2D and 3D only)")
    return Path(str(files("napari_shiftseg") / "models" / BUNDLED_KINDS[kind][ndim]))


def load_named(model, device: str | torch.device = "cpu") -> Model:
    """A model file, a bioimage.io package exported by shiftseg, or a shipped model by name:
    ``bundled:2`` / ``bundled:3`` / ``bundled:2:disks`` (e.g. the 2D nuclei model for a stack)."""
    if isinstance(model, str) and model.startswith("bundled:"):
        parts = model.split(":")
        if len(parts) not in (2, 3) or parts[1] not in ("2", "3"):
            raise ShiftSegError(f"unknown bundled model {model!r}; use bundled:2, bundled:3, "
                                "bundled:2:disks or bundled:3:disks")
        return load_bundled(int(parts[1]), device, kind=parts[2] if len(parts) == 3 else "nuclei")
    return load_model(model, device)


def load_bundled(ndim: int, device: str | torch.device = "cpu", kind: str = "nuclei") -> Model:
    """A bundled model for ``ndim``-dimensional images (the nuclei model unless ``kind``)."""
    return load_model(bundled_model_path(ndim, kind), device)
