"""Devices, and tile sizes that fit in memory.

The memory model is analytical (no probing runs): a valid U-Net's activations at level ``i``
are at most ``channels(i) · (window / f^i)^d`` values, and inference keeps every skip tensor
alive until the up path consumes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..util._errors import ShiftSegError
from .geometry import UNetGeometry

#: Largest tile ``auto_tile`` proposes per axis: beyond this the context overhead is already
#: small (amplification < 1.5 for a 3D l = 3 net) and tiles only get slower to cancel.
MAX_AUTO_TILE = {2: 1024, 3: 256}


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'`` into a torch device.

    ``'auto'`` picks CUDA, then Apple MPS, then the CPU.

    Raises
    ------
    ShiftSegError
        An unknown name, or a GPU that is asked for but not present.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if name == "auto":
        if _cuda_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ShiftSegError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not _cuda_available():
            raise ShiftSegError(f"device {device!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ShiftSegError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise ShiftSegError(f"device {device!r} was asked for but Apple MPS is not available; use 'cpu' or 'auto'")
        return dev
    raise ShiftSegError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _config(model):
    net = getattr(model, "net", model)
    config = getattr(net, "config", None)
    if config is None:
        raise TypeError(f"expected a shiftseg Model or UNet, got {type(model).__name__}")
    return config


def estimate_tile_memory(geometry: UNetGeometry, model, tile: int | Sequence[int], batch: int = 1,
                         bytes_per_value: int = 4) -> int:
    """Estimated peak bytes of one inference call on ``batch`` tiles of ``tile`` outputs
    (:meth:`~napari_shiftseg.network.unet.UNetConfig.forward_bytes`, the one estimate)."""
    config = _config(model)
    if config.geometry != geometry:
        raise ShiftSegError("the geometry asked about is not the model's")
    return config.forward_bytes(tile, batch, bytes_per_value)


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume a modest machine
        return 8 * 1024**3


def memory_budget(device: str | torch.device) -> int:
    """Bytes a tile may use: 80 % of free GPU memory, or half of the available RAM."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(0.8 * free)
    return int(0.5 * _available_ram())


def auto_tile(geometry: UNetGeometry, model, device: str | torch.device = "auto",
              memory_budget_bytes: int | None = None, batch: int = 1, half: bool = False):
    """Largest n·f^l tile whose estimated memory fits the budget: n·F_a on every axis a (an int
    for an isotropic net, a tuple per axis otherwise).

    The budget is ``memory_budget_bytes`` when given, else :func:`memory_budget` of the
    device. Never below one grid cell and never above :data:`MAX_AUTO_TILE` on any axis.
    """
    budget = memory_budget(device) if memory_budget_bytes is None else int(memory_budget_bytes)
    grids = geometry.grids

    def tile(n: int):
        return n * grids[0] if geometry.isotropic else tuple(n * f for f in grids)

    best = n = 1
    while n * max(grids) <= MAX_AUTO_TILE[geometry.ndim]:
        if estimate_tile_memory(geometry, model, tile(n), batch, 2 if half else 4) > budget:
            break
        best = n
        n += 1
    return tile(best)


#: The tile request that means "the largest that fits this device's memory".
AUTO = "auto"


def resolve_tile(tile, geometry: UNetGeometry, model, device: str | torch.device = "auto", half: bool = False):
    """``tile`` as given, or :func:`auto_tile` for ``"auto"`` (CLI ``--tile auto``, the Segment
    widget's "auto" tile). Running out of memory anyway (the estimate is analytical) fails with
    a one-line message that suggests a smaller tile (``_errors.failure_message``)."""
    if isinstance(tile, str):
        if tile.strip().lower() != AUTO:
            raise ShiftSegError(f"tile must be a size or 'auto', got {tile!r}")
        return auto_tile(geometry, model, device, half=half)
    return tile
