"""The paper's U-Net family in torch: valid (default) or same convolutions, max-pool by f,
nearest ("fixed") or transposed-conv ("learnt") upsampling, centre-cropped skips.

::

    input ─[c conv+ReLU]─────────────────── crop+concat ─[c conv+ReLU]─ 1^d conv ─> E (+1 fg)
                 └ maxpool f ─[c conv+ReLU]─ crop+concat ─[c conv+ReLU]┘ up f
                                  └ maxpool f ─ ... bottom ... ┘ up f

Sizes are never computed here: :class:`~napari_shiftseg.network.geometry.UNetGeometry` owns them, and
the forward pass refuses inputs it calls invalid instead of silently rounding in a pooling layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..util._errors import ShiftSegError
from ..util.validate import whole
from .geometry import UNetGeometry
from .spatial import EMBEDDINGS

UPSAMPLINGS = ("learnt", "nearest")

#: (field, highest, why) for UNetConfig's integer fields (all >= 1). Model files are untrusted:
#: these bounds, and the size limits below, refuse a hostile config before anything is allocated.
_CONFIG_BOUNDS = (
    ("in_channels", 16, "images have a handful of channels"),
    ("base_channels", 256, "the paper uses 16 to 64"),
    ("channel_growth", 4, "channels grow by 2 per level in the paper"),
    ("embed_dim", 16, "instance embeddings need a few dimensions, the paper uses 2 to 8"),
)
#: Most parameters a model may have: 800 MB of float32 weights, ~25x a large 3D U-Net.
MAX_PARAMETERS = 200_000_000
#: Most memory (estimated) one forward pass of the network's *smallest* tile may need: a model
#: over this can never run anywhere. (Tiles are the user's choice, so a model is not refused
#: because the default 128-voxel tile would not fit; ``shiftseg info`` shows that estimate.)
MAX_TILE_BYTES = 64 * 2**30
#: Tile width (per axis) of the default memory estimate: the default tile of ``shiftseg segment``.
ESTIMATE_TILE = 128
#: Headroom of a forward pass over its tensors: convolution workspaces, allocator fragmentation.
WORKSPACE = 1.5


def _gb(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MB"


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a network (stored in model files)."""

    geometry: UNetGeometry = field(default_factory=UNetGeometry)
    in_channels: int = 1
    base_channels: int = 16
    channel_growth: int = 2
    embed_dim: int = 3
    upsampling: str = "learnt"
    foreground_head: bool = True
    #: "free" (the paper's embeddings) or "spatial" (position + predicted offset, see spatial.py)
    embedding: str = "free"
    #: spatial only: embedding units per voxel added to the first d channels after stitching;
    #: one per axis for anisotropic voxels (so that the units are physical: a z step 3x the
    #: pixel gets 3x the scale)
    position_scale: float | tuple[float, ...] = 0.0

    def __post_init__(self):
        if self.upsampling not in UPSAMPLINGS:
            raise ShiftSegError(f"upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}")
        if not isinstance(self.geometry, UNetGeometry):
            raise ShiftSegError(f"geometry must be a UNetGeometry, got {type(self.geometry).__name__}")
        for name, high, why in _CONFIG_BOUNDS:
            whole(getattr(self, name), name, 1, high, why)
        if not isinstance(self.foreground_head, bool):
            raise ShiftSegError(f"foreground_head must be true or false, got {self.foreground_head!r}")
        object.__setattr__(self, "position_scale", _check_position_scale(self.position_scale, self.geometry.ndim))
        self._check_size()
        if self.embedding not in EMBEDDINGS:
            raise ShiftSegError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.embedding == "spatial":
            if self.embed_dim < self.geometry.ndim:
                raise ShiftSegError(f"a spatial embedding needs embed_dim >= {self.geometry.ndim} "
                                    f"(one channel per axis), got {self.embed_dim}")
            scales = self.position_scale if isinstance(self.position_scale, tuple) else (self.position_scale,)
            if not all(0 < v <= 10 for v in scales):
                raise ShiftSegError(f"position_scale must be a number in (0, 10] (or one per axis), "
                                    f"got {self.position_scale!r}")

    @property
    def positions(self) -> tuple[float, ...] | None:
        """Embedding units per voxel of the positions a spatial head's embeddings carry, one per
        spatial axis of the network (clustering cuts embedding space into blocks by them);
        None for free embeddings, which carry no position."""
        if self.embedding != "spatial":
            return None
        scale = self.position_scale
        return tuple(float(v) for v in scale) if isinstance(scale, tuple) else (float(scale),) * self.geometry.ndim

    def parameters_count(self) -> int:
        """Number of weights, from the fields alone (equal to the built network's)."""
        g = self.geometry
        kernel, convs = g.kernel_size**g.ndim, g.convs_per_level
        ch = [self.channels(i) for i in range(g.levels + 1)]

        def block(cin: int, cout: int) -> int:
            return cin * cout * kernel + cout + (convs - 1) * (cout * cout * kernel + cout)

        def up(level: int) -> int:
            return int(np.prod(g.level_factors(level))) if self.upsampling == "learnt" else 1

        params = sum(block(self.in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(g.levels))
        params += block(ch[-2], ch[-1])
        params += sum(ch[i + 1] * ch[i] * up(i) + ch[i] + block(2 * ch[i], ch[i]) for i in range(g.levels))
        return params + ch[0] * self.out_channels + self.out_channels

    def forward_bytes(self, tile: int | Sequence[int], batch: int = 1, bytes_per_value: int = 4) -> int:
        """Estimated peak bytes of one forward pass on ``batch`` tiles of ``tile`` outputs: the
        one memory estimate (the auto tile and the refusal of oversized networks both use it).

        Upper bound: the input, the skips of every level, the widest step at full resolution
        (upsampled + concatenated + convolved, ~4 · channels(0) maps) with headroom for
        convolution workspaces, plus the weights. Pure arithmetic: nothing is allocated.
        """
        g = self.geometry
        per_axis = (int(tile),) * g.ndim if isinstance(tile, (int, np.integer)) else tuple(tile)
        window = np.array(g.tile_input_size(g.cover(per_axis)), dtype=np.float64)  # whole grid cells
        values = window.prod() * self.in_channels  # the input itself
        scale = np.ones(g.ndim)
        for level in range(g.levels + 1):
            values += self.channels(level) * np.prod(window / scale)  # skip (or bottom) activations
            if level < g.levels:
                scale = scale * np.array(g.level_factors(level))
        values += 4 * self.channels(0) * window.prod()
        return int(WORKSPACE * batch * values * bytes_per_value + 4 * self.parameters_count())

    def estimate(self, tile: int = ESTIMATE_TILE) -> tuple[int, int]:
        """(parameters, :meth:`forward_bytes` of one ``tile``-wide tile)."""
        return self.parameters_count(), self.forward_bytes(tile)

    def _check_size(self) -> None:
        smallest = max(self.geometry.grids)
        params, nbytes = self.estimate(smallest)
        if params > MAX_PARAMETERS:
            raise ShiftSegError(
                f"this network would have about {params:.3g} parameters ({_gb(4 * params)} of "
                f"weights); shiftseg refuses more than {MAX_PARAMETERS:.0e} ({_gb(4 * MAX_PARAMETERS)})")
        if nbytes > MAX_TILE_BYTES:
            raise ShiftSegError(
                f"this network would need about {_gb(nbytes)} of memory even for its smallest tile "
                f"({smallest} voxels per axis, plus its context of {self.geometry.contexts}); "
                f"shiftseg refuses more than {_gb(MAX_TILE_BYTES)}")

    @property
    def out_channels(self) -> int:
        """Embedding channels plus the foreground logit (last channel) when present."""
        return self.embed_dim + int(self.foreground_head)

    def channels(self, level: int) -> int:
        return self.base_channels * self.channel_growth**level

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        data = dict(data)
        geometry = UNetGeometry(**data.pop("geometry"))
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ShiftSegError(f"unknown model settings {sorted(unknown)}")
        return cls(geometry=geometry, **data)


def _check_position_scale(value, ndim: int):
    """A finite number, or one finite number per axis (stored as a tuple)."""
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ShiftSegError(f"position_scale {tuple(value)} must have one value per axis ({ndim})")
        return tuple(_check_position_scale(v, ndim) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ShiftSegError(f"position_scale must be a finite number, got {value!r}")
    return value


def _layers(ndim: int):
    if ndim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d
    return nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d


def memory_format(ndim: int) -> torch.memory_format:
    """channels_last for 2D, channels_last_3d for 3D (1.2–1.9× faster on CPU here)."""
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


class ConvBlock(nn.Sequential):
    """``c`` conv+ReLU layers (valid: each removes k − 1 voxels per axis)."""

    def __init__(self, geometry: UNetGeometry, in_ch: int, out_ch: int):
        conv, _, _ = _layers(geometry.ndim)
        pad = 0 if geometry.valid else geometry.kernel_size // 2
        layers = []
        for i in range(geometry.convs_per_level):
            layers += [conv(in_ch if i == 0 else out_ch, out_ch, geometry.kernel_size, padding=pad),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


def center_crop(x: torch.Tensor, shape) -> torch.Tensor:
    """Crop the spatial axes of ``x`` to ``shape`` around the centre (skip connections)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """U-Net of the paper's family. Output: (B, E [+1 foreground logit], *out_spatial)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        g = config.geometry
        conv, convt, pool = _layers(g.ndim)
        ch = [config.channels(i) for i in range(g.levels + 1)]
        self.down = nn.ModuleList(
            ConvBlock(g, config.in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(g.levels)
        )
        # One pooling per level: an anisotropic network pools some axes by 1 (not at all).
        self.pools = nn.ModuleList(pool(g.level_factors(i), g.level_factors(i)) for i in range(g.levels))
        self.bottom = ConvBlock(g, ch[g.levels - 1], ch[g.levels])
        if config.upsampling == "learnt":
            # kernel = stride = f: a different weight for each of the f^d sub-positions, which
            # is what lets the network reach f^(d·l) distinct output functions (Lemma 1).
            self.upsample = nn.ModuleList(convt(ch[i + 1], ch[i], g.level_factors(i), g.level_factors(i))
                                          for i in range(g.levels))
        else:
            # Nearest neighbour copies a value to all f^d sub-positions; the 1^d conv only
            # reduces channels and is position-independent, so the function count stays 1.
            self.upsample = nn.ModuleList(
                nn.Sequential(nn.Upsample(scale_factor=tuple(float(f) for f in g.level_factors(i)), mode="nearest"),
                              conv(ch[i + 1], ch[i], 1))
                for i in range(g.levels)
            )
        self.up = nn.ModuleList(ConvBlock(g, 2 * ch[i], ch[i]) for i in range(g.levels))
        self.head = conv(ch[0], config.out_channels, 1)

    @property
    def geometry(self) -> UNetGeometry:
        return self.config.geometry

    def check_input(self, x: torch.Tensor) -> None:
        g = self.geometry
        if x.ndim != g.ndim + 2:
            raise ShiftSegError(
                f"the network expects (batch, channel, {g.ndim} spatial axes), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.in_channels:
            raise ShiftSegError(f"the network expects {self.config.in_channels} channel(s), got {x.shape[1]}")
        shape = tuple(int(s) for s in x.shape[2:])
        if not g.is_valid_input(shape):
            rules = ", ".join(dict.fromkeys(f"≡ {a.input_residue} mod {a.grid}, >= {a.min_input_size}"
                                            for a in g.axes))
            raise ShiftSegError(
                f"input shape {shape} is not valid for this U-Net (sizes {rules}); e.g. "
                f"{g.nearest_valid_input(shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for level in reversed(range(self.geometry.levels)):
            x = self.upsample[level](x)
            x = torch.cat([center_crop(skips[level], x.shape[2:]), x], dim=1)
            x = self.up[level](x)
        return self.head(x)
