"""Model files: one ``.safetensors`` file with the weights and, in its metadata, the config.

safetensors never unpickles anything, so opening a hostile file cannot execute code. Pickle and
torch checkpoints are refused by their first bytes with a message that says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from ._errors import ShiftSegError
from .unet import UNet, UNetConfig

FORMAT = "napari-shiftseg/1"
BUNDLED = {2: "default_2d.safetensors", 3: "default_3d.safetensors"}


@dataclass
class Model:
    """A network plus what inference needs to know about how it was trained."""

    net: UNet
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def geometry(self):
        return self.net.config.geometry

    @property
    def name(self) -> str:
        return self.path.name if self.path else "unsaved model"


def save_model(model: Model | UNet, path, meta: dict | None = None) -> Path:
    """Write weights + config (+ ``meta``: normalisation, training window, metrics) to ``path``."""
    if isinstance(model, UNet):
        model = Model(model, dict(meta or {}))
    elif meta:
        model.meta.update(meta)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ShiftSegError(f"model files must end in .safetensors, got {path.name}")
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
    header length may well start with the byte that also starts a pickle)."""
    head = path.read_bytes()[:2]
    if head[:1] == b"\x80" or head == b"PK":
        return (f"{path.name} is a pickle/torch checkpoint; shiftseg only opens .safetensors model "
                "files because pickle files can run code when loaded")
    return f"{path.name} is corrupt or truncated, not a shiftseg model file"


def read_metadata(path) -> dict:
    """The metadata of a model file (config, meta, version), validated, without weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ShiftSegError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        raise ShiftSegError(_why_unreadable(path)) from None
    if metadata.get("format") != FORMAT:
        raise ShiftSegError(f"{path.name} is a safetensors file but not a shiftseg model (no '{FORMAT}' metadata)")
    try:
        config = UNetConfig.from_dict(json.loads(metadata["config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ShiftSegError(f"{path.name} has an unreadable model configuration ({err})") from None
    return {"config": config, "meta": meta, "version": metadata.get("version")}


def load_model(path, device: str | torch.device = "cpu") -> Model:
    """Load and validate a model file; never executes code from the file."""
    path = Path(path)
    info = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ShiftSegError(f"{path.name} is corrupt or truncated ({err})") from None
    net = UNet(info["config"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ShiftSegError(f"{path.name}: weights do not match its configuration ({first})") from None
    net.eval().to(device)
    return Model(net, info["meta"], path)


def bundled_model_path(ndim: int) -> Path:
    """Path of the default model shipped inside the package for 2D or 3D images."""
    if ndim not in BUNDLED:
        raise ShiftSegError(f"there is no bundled model for {ndim}D images (2D and 3D only)")
    return Path(str(files("napari_shiftseg") / "models" / BUNDLED[ndim]))


def load_bundled(ndim: int, device: str | torch.device = "cpu") -> Model:
    """The bundled default model for ``ndim``-dimensional images."""
    return load_model(bundled_model_path(ndim), device)
