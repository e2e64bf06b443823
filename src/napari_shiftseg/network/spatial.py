"""Spatial embeddings: the network predicts an offset, the embedding is position + offset.

With the paper's *free* embeddings a U-Net can give at most f^(d·l) same-looking objects
different embeddings (THEORY.md, result 2), and every object has to find a free spot in
embedding space on its own. With a *spatial* head the first ``d`` embedding channels are

    e_a(x) = scale · x_a + o_a(x)        (a = each spatial axis, x_a in image voxels)

where ``o`` is what the network outputs. Pixels of one object only have to agree on a point
(e.g. its centre), and objects are told apart by where they are, so the capacity limit is gone.

**Tiling stays exact.** The network output ``o`` is tiled exactly as before; the position term
is added *after* stitching, from global image coordinates, so a tile never sees its own origin
(adding local tile positions inside the network would give every tile another function).
Training adds window-local positions instead: the discriminative loss only compares
embeddings with each other (pull to the mean, push between means), so a common shift of every
position changes nothing (the tiny ``gamma`` norm term aside).

``scale`` is in embedding units per voxel. It is chosen so that a typical object spans about
the push margin 2·delta_d: neighbours are then already nearly apart by position alone.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import torch

__all__ = ["EMBEDDINGS", "add_positions", "add_positions_torch", "position_grid"]

#: Kinds of embedding head: the paper's ``free`` embeddings or ``spatial`` (position + offset).
EMBEDDINGS = ("free", "spatial")


def position_grid(shape, scale, origin=None, dtype=np.float32) -> np.ndarray:
    """(d, *shape) array of ``scale · (origin + index)`` per axis (``scale``: one number, or one
    per axis for anisotropic voxels)."""
    origin = (0,) * len(shape) if origin is None else tuple(origin)
    scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale,) * len(shape)
    axes = [(np.arange(n, dtype=np.float64) + o) * s for n, o, s in zip(shape, origin, scales)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(dtype, copy=False)


def add_positions_torch(out: torch.Tensor, scale) -> torch.Tensor:
    """Training: add window-local positions to the first d channels of (B, C, *spatial)."""
    spatial = tuple(out.shape[2:])
    d = len(spatial)
    grid = torch.from_numpy(position_grid(spatial, scale)).to(device=out.device, dtype=out.dtype)
    return torch.cat([out[:, :d] + grid[None], out[:, d:]], dim=1)


def _add_block(block, scale, spatial_axes: tuple[int, ...], block_info=None):
    loc = block_info[0]["array-location"]
    shape = tuple(block.shape[a] for a in spatial_axes)
    origin = tuple(loc[a][0] for a in spatial_axes)
    grid = position_grid(shape, scale, origin, block.dtype)
    out = np.array(block, copy=True)
    d = len(spatial_axes)
    # Broadcast the (d, *in-plane) grid over any axes between channel and the spatial axes
    # (the z axis of a 2D model run slice by slice).
    expand = tuple(a for a in range(1, block.ndim) if a not in spatial_axes)
    out[:d] += np.expand_dims(grid, expand) if expand else grid
    return out


def add_positions(embeddings: da.Array, scale, ndim: int) -> da.Array:
    """Inference: add *global* positions to the first ``ndim`` channels of a lazy (C, *S) array.

    The last ``ndim`` axes are the model's spatial axes (a 2D model applied slice by slice to a
    3D stack gets in-plane positions only). Chunk by chunk, so it stays lazy and exact.
    """
    spatial_axes = tuple(range(embeddings.ndim - ndim, embeddings.ndim))
    scale = tuple(float(v) for v in scale) if isinstance(scale, (tuple, list)) else float(scale)
    return da.map_blocks(_add_block, embeddings, scale, spatial_axes, dtype=embeddings.dtype)
