"""Arbitrarily large synthetic volumes that cost only the voxels you look at.

:func:`jittered_lattice` places one sphere (disk in 2D) near every site of a lattice and
computes each voxel from its *global* coordinates alone. So any region, of any chunking, is
generated from its own voxels only (a 1024 x 1024 plane of a 512 x 1024 x 1024 volume takes tens
of milliseconds), objects cross chunk borders seamlessly, and every plane shows objects. This is
the napari "large lazy volume" sample: moving the z slider must never stall the viewer.

Why a lattice and not random placement: with random placement, a voxel's object depends on
other voxels (who was placed first), so chunks had to be generated whole and objects kept away
from chunk borders (:func:`napari_shiftseg.synthetic.synth.lazy_random_objects`), which left empty planes
at every chunk border and made each slider move generate 16 chunks of 2 M voxels.

The lattice is not periodic in what the network sees: every sphere has its own radius,
brightness and position jitter, and in 3D each lattice column is shifted in z by 0, 1/3 or 2/3
of the spacing (so that every plane cuts through spheres near their centre).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..util._errors import ShiftSegError
from ..util._options import with_overrides

__all__ = ["jittered_lattice", "LatticeScene"]

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _hash(seed: int, salt: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from integer site keys (splitmix64 finaliser; broadcasts)."""
    with np.errstate(over="ignore"):
        h = np.uint64(seed * 1_000_003 + salt) * _MIX
        for k in keys:
            h = (h ^ (np.asarray(k).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019))) * _MIX
            h ^= h >> np.uint64(31)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _check(shape, spacing, radius, radius_jitter, position_jitter) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ShiftSegError(f"shape must be 2 or 3 positive sizes, got {shape}")
    if radius <= 0 or radius_jitter < 0 or position_jitter < 0:
        raise ShiftSegError("radius must be > 0, radius_jitter and position_jitter >= 0")
    # Each voxel is tested against the nearest lattice site only: a sphere must stay within
    # half a spacing of its site, which also keeps neighbours apart.
    reach = radius + radius_jitter + position_jitter
    if reach >= spacing / 2:
        raise ShiftSegError(
            f"radius + radius_jitter + position_jitter ({reach:g}) must be below half the spacing "
            f"({spacing / 2:g}) so that neighbouring objects never touch"
        )
    return shape


def _z_phase(ky, kx, spacing: float) -> np.ndarray:
    """z shift of a lattice column: 0, 1/3 or 2/3 of the spacing."""
    return ((ky + 2 * kx) % 3) * (spacing / 3.0)


@dataclass(frozen=True)
class LatticeScene:
    """The spheres of :func:`jittered_lattice`: lattice ``spacing``; radii uniform in
    ``radius +- radius_jitter``; centres moved from their site by up to ``position_jitter`` per
    axis (``radius + radius_jitter + position_jitter`` must stay below ``spacing / 2``); the
    share ``keep`` of sites holding a sphere; brightness uniform in ``intensity``; Gaussian
    image noise ``noise_std``."""

    spacing: float = 15.0
    radius: float = 5.0
    radius_jitter: float = 0.7
    position_jitter: float = 1.5
    keep: float = 0.8
    intensity: tuple[float, float] = (0.6, 1.0)
    noise_std: float = 0.03


def _block(shape_info, scene: LatticeScene, seed, want, block_info=None):
    """Image (``want == "image"``) or labels of one block, from global voxel coordinates.

    Every sphere's parameters are hashed once per lattice site met in the block (a few thousand),
    then spread to the voxels by indexing: the per-voxel work is a few gathers and one distance.
    """
    spacing, radius, radius_jitter = scene.spacing, scene.radius, scene.radius_jitter
    position_jitter, keep, intensity, noise_std = (scene.position_jitter, scene.keep, scene.intensity,
                                                   scene.noise_std)
    info = block_info[None]
    ndim = len(info["shape"])
    lo = [r[0] for r in info["array-location"]]
    hi = [r[1] for r in info["array-location"]]
    # In-plane site of every voxel: the nearest lattice site (reach < spacing / 2).
    k_voxel = [np.floor(np.arange(a, b) / spacing + 0.5).astype(np.int64) for a, b in zip(lo[-2:], hi[-2:])]
    k_site = [np.arange(k[0], k[-1] + 1) for k in k_voxel]
    index = [k - k[0] for k in k_voxel]
    ky, kx = k_site[0][:, None], k_site[1][None, :]
    keys = [ky, kx]
    centre = [ky * spacing, kx * spacing]
    if ndim == 3:
        # Per plane and in-plane site: the nearest site of that lattice column in z.
        phase = _z_phase(ky, kx, spacing)[None]
        z = np.arange(lo[0], hi[0], dtype=np.float64)[:, None, None]
        kz = np.floor((z - phase) / spacing + 0.5).astype(np.int64)
        keys = [kz, ky[None], kx[None]]
        centre = [kz * spacing + phase, centre[0][None], centre[1][None]]
    site_shape = np.broadcast_shapes(*(k.shape for k in keys))
    centre = [np.broadcast_to(c + (2 * _hash(seed, a, *keys) - 1) * position_jitter, site_shape)
              for a, c in enumerate(centre)]
    r = radius + (2 * _hash(seed, 7, *keys) - 1) * radius_jitter
    r = np.where(_hash(seed, 8, *keys) < keep, r, 0.0)        # an empty site: radius 0
    spread = (slice(None),) * (ndim - 2) + np.ix_(*index)     # site arrays -> voxels

    def voxels(site_values):
        return np.broadcast_to(site_values, site_shape)[spread].astype(np.float32)

    coords = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)]
    axes = [c.reshape((-1,) + (1,) * (ndim - 1 - a)) for a, c in enumerate(coords)]
    sq = sum((x - voxels(c)) ** 2 for x, c in zip(axes, centre))
    r_vox = voxels(r)
    inside = sq < r_vox * r_vox
    if want == "labels":
        # A unique id per site: its index in the lattice (sites at index -1 .. n along each axis).
        n_sites = [math.ceil(s / spacing) + 2 for s in info["shape"]]
        flat = np.zeros(site_shape, np.int64)
        for k, n in zip(np.broadcast_arrays(*keys), n_sites):
            flat = flat * n + (k + 1)
        ids = np.broadcast_to(flat + 1, site_shape)[spread]
        return np.where(inside, ids, 0).astype(np.int32)
    low, high = intensity
    brightness = voxels(low + (high - low) * _hash(seed, 9, *keys))
    # Anti-aliased edge: a one-voxel ramp at the sphere's surface.
    image = brightness * np.clip(r_vox - np.sqrt(sq) + 0.5, 0.0, 1.0) * (r_vox > 0)
    if noise_std:
        rng = np.random.default_rng([seed, *lo])
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std)
    return image.astype(np.float32, copy=False)


def jittered_lattice(shape, chunks, seed: int = 0, scene: LatticeScene | None = None, **overrides):
    """Spheres (disks in 2D) near the sites of a square lattice, as lazy dask arrays.

    Parameters
    ----------
    shape : tuple of int
        (y, x) or (z, y, x); any size (nothing is computed until a region is asked for).
    chunks : int or tuple of int
        Dask chunks; they change nothing in the content except the noise (seeded per chunk).
    scene : LatticeScene, optional
        Spacing, radii, jitter, occupancy, brightness and noise (defaults there); its fields may
        be given by name (``spacing=20``).
    seed : int

    Returns
    -------
    image : dask.array.Array of float32
    labels : dask.array.Array of int32
        0 = background; one id per sphere, unique over the volume (not consecutive).
    """
    sc = with_overrides(scene or LatticeScene(), "jittered_lattice", overrides)
    shape = _check(shape, sc.spacing, sc.radius, sc.radius_jitter, sc.position_jitter)
    if not 0 < sc.keep <= 1:
        raise ShiftSegError(f"keep must be in (0, 1], got {sc.keep}")
    sc = LatticeScene(float(sc.spacing), float(sc.radius), float(sc.radius_jitter), float(sc.position_jitter),
                      float(sc.keep), (float(sc.intensity[0]), float(sc.intensity[1])), float(sc.noise_std))
    template = da.zeros(shape, chunks=chunks, dtype=np.float32)
    token = tokenize(shape, template.chunks, dataclasses.astuple(sc), seed)
    args = (shape, sc, int(seed))
    image = template.map_blocks(lambda _, block_info=None: _block(*args, "image", block_info=block_info),
                                dtype=np.float32, name=f"shiftseg-lattice-image-{token}")
    labels = template.map_blocks(lambda _, block_info=None: _block(*args, "labels", block_info=block_info),
                                 dtype=np.int32, name=f"shiftseg-lattice-labels-{token}")
    return image, labels
