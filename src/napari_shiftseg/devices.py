"""Devices, tile sizes that fit in memory, and retrying with smaller tiles after OOM.

The memory model is analytical (no probing runs): a valid U-Net's activations at level ``i``
are at most ``channels(i) · (window / f^i)^d`` values, and inference keeps every skip tensor
alive until the up path consumes it.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from ._errors import ShiftSegError
from .geometry import UNetGeometry

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Largest tile ``auto_tile`` proposes per axis: beyond this the context overhead is already
#: small (amplification < 1.5 for a 3D l = 3 net) and tiles only get slower to cancel.
MAX_AUTO_TILE = {2: 1024, 3: 256}
_WORKSPACE = 1.5  # headroom for convolution workspaces and the allocator's fragmentation


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
    """Estimated peak bytes of one inference call on ``batch`` tiles of ``tile`` outputs.

    Upper bound: skips of every level are held, plus the widest step at full resolution
    (upsampled + concatenated + convolved, ~4 · channels(0) maps), plus the weights.
    """
    config = _config(model)
    tile = tuple(tile) if not isinstance(tile, (int, np.integer)) else (int(tile),) * geometry.ndim
    window = np.array(geometry.tile_input_size(tile), dtype=np.float64)
    values = window.prod() * config.in_channels  # the input itself
    scale = np.ones(geometry.ndim)
    for level in range(geometry.levels + 1):
        values += config.channels(level) * np.prod(window / scale)  # skip (or bottom) activations
        if level < geometry.levels:
            scale = scale * np.array(geometry.level_factors(level))
    values += 4 * config.channels(0) * window.prod()
    weights = sum(p.numel() for p in getattr(model, "net", model).parameters())
    return int(_WORKSPACE * batch * values * bytes_per_value + 4 * weights)


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
              memory_budget_bytes: int | None = None, batch: int = 1, half: bool = False) -> int:
    """Largest n·f^l tile (per axis, isotropic) whose estimated memory fits the budget.

    The budget is ``memory_budget_bytes`` when given, else :func:`memory_budget` of the
    device. Never below f^l and never above :data:`MAX_AUTO_TILE`.
    """
    budget = memory_budget(device) if memory_budget_bytes is None else int(memory_budget_bytes)
    grid = geometry.grid
    best = grid
    tile = grid
    while tile <= MAX_AUTO_TILE[geometry.ndim]:
        if estimate_tile_memory(geometry, model, tile, batch, 2 if half else 4) > budget:
            break
        best = tile
        tile += grid
    return best


def _is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(err, oom):
        return True
    # MPS and the CPU allocator report exhaustion as a plain RuntimeError.
    return isinstance(err, RuntimeError) and (
        "out of memory" in str(err).lower() or "can't allocate memory" in str(err).lower()
    )


def free_memory() -> None:
    """Drop cached allocator blocks after an OOM so the retry starts from a clean slate."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _mps_available():
        torch.mps.empty_cache()


def smaller_tile(tile: int | Sequence[int], geometry: UNetGeometry):
    """The next smaller n·f^l tile: n shrinks by a quarter (at least 1), never below f^l."""
    if not isinstance(tile, (int, np.integer)):
        return tuple(smaller_tile(t, geometry) for t in tile)
    n = max(1, int(tile) // geometry.grid)
    return max(1, n - max(1, n // 4)) * geometry.grid


def run_with_oom_retry(fn: Callable[[int | Sequence[int]], T], tile: int | Sequence[int], geometry: UNetGeometry,
                       on_retry: Callable[[object, object], None] | None = None) -> T:
    """Call ``fn(tile)``; after an out-of-memory error retry with the next smaller n·f^l tile.

    Raises
    ------
    ShiftSegError
        When even an f^l tile does not fit.
    """
    while True:
        try:
            return fn(tile)
        except Exception as err:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_oom(err):
                raise
            free_memory()
            smaller = smaller_tile(tile, geometry)
            if smaller == (tile if isinstance(tile, (int, np.integer)) else tuple(tile)):
                raise ShiftSegError(
                    f"out of memory even with the smallest tile {tile} (f^l = {geometry.grid}); "
                    "use a smaller batch, half precision on a GPU, or the CPU"
                ) from None
            logger.warning("out of memory with tile %s; retrying with %s", tile, smaller)
            if on_retry is not None:
                on_retry(tile, smaller)
            tile = smaller
