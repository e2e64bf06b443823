"""``shiftseg synth lattice|random|nuclei``: write a synthetic image and its labels as TIFF files.

Writes ``DIR/image.tif`` and ``DIR/labels.tif`` (zlib-compressed). Labels are uint16 when the
ids fit, int32 otherwise. ``--dtype uint8|uint16`` stores the image rescaled linearly from its
[min, max] to the full integer range (like a camera would), which keeps files small; the
normalisation used for training and inference is percentile-based, so the scale is irrelevant.
"""

from __future__ import annotations

from . import _args

DEFAULT_SHAPES = {2: (256, 256), 3: (64, 128, 128)}
#: Most voxels a synthetic image may have: the image, its labels and the generator's work arrays
#: (float32/int32) then stay within a few GB.
MAX_VOXELS = 2**28


def add_parser(sub):
    p = sub.add_parser(
        "synth", help="write synthetic disks/spheres (image.tif + labels.tif) for training or tests",
        description="Write DIR/image.tif and DIR/labels.tif with synthetic disks (2D) or "
                    "spheres (3D): on a lattice (the paper's periodic data) or placed at random.",
    )
    p.add_argument("kind", choices=("lattice", "random", "nuclei"), help="lattice: identical "
                   "objects on a square/cubic grid; random: non-overlapping objects with jittered "
                   "size/intensity; nuclei: realistic nuclei (clusters, irregular shapes, "
                   "texture, blur, Poisson noise; --radius-range, --density)")
    p.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                   help="2 or 3 (default: from --shape, else 2)")
    p.add_argument("--shape", type=_args.shape, default=None,
                   help="image size, e.g. 256,256 or 64x128x128 (default 256x256 / 64x128x128)")
    add_object_options(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--dtype", choices=("float32", "uint16", "uint8"), default="float32",
                   help="image data type; integer types are rescaled to their full range")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.set_defaults(run=run)


def resolve_shape(ndim: int | None, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The image shape from ``--ndim``/``--shape``, refusing a contradiction."""
    from ..util._errors import ShiftSegError

    if shape is None:
        return DEFAULT_SHAPES[ndim or 2]
    if len(shape) not in (2, 3):
        raise ShiftSegError(f"--shape {shape} must have 2 or 3 sizes")
    if ndim is not None and len(shape) != ndim:
        raise ShiftSegError(f"--shape {shape} is {len(shape)}D but --ndim is {ndim}")
    voxels = 1
    for size in shape:
        voxels *= size
    if voxels > MAX_VOXELS:
        raise ShiftSegError(f"--shape {'x'.join(map(str, shape))} has {voxels:.3g} voxels; synthetic "
                            f"images are limited to {MAX_VOXELS:.3g} ({MAX_VOXELS >> 20} Mi voxels)")
    return shape


def check_fits(shape, n_objects: int | None, radius: float, radius_jitter: float,
               min_gap: float = 2.0) -> None:
    """Refuse ``n_objects`` that cannot fit into ``shape`` even at the densest packing of the
    smallest allowed objects, before any is placed (placing them would only fail slowly)."""
    import math

    from ..util._errors import ShiftSegError

    if n_objects is None:
        return
    smallest = max(radius - abs(radius_jitter), 0.0)
    # Centres are more than r1 + r2 + min_gap apart: each object owns a ball of this radius.
    reach = smallest + min_gap / 2
    ndim = len(shape)
    ball = math.pi * reach**2 if ndim == 2 else 4 / 3 * math.pi * reach**3
    densest = 0.9069 if ndim == 2 else 0.7405  # hexagonal / face-centred cubic packing
    room = 1.0
    for size in shape:
        room *= max(size - 2 * math.floor(smallest), 0) + 2 * reach
    most = int(densest * room / ball)
    if n_objects > most:
        raise ShiftSegError(
            f"--n-objects {n_objects} cannot fit into {'x'.join(map(str, shape))}: objects of "
            f"radius >= {smallest:g} (with a gap of {min_gap:g}) fit at most about {most} times; "
            "use fewer objects, a smaller --radius or a larger --shape")


def generate(kind: str, args, shape, seed: int, random_offset: bool = False):
    """(image, labels) for the synth options in ``args`` (shared with ``shiftseg train``).

    ``random_offset`` moves the lattice by a seed-dependent offset, so that images drawn for
    training are not all the same picture.
    """
    import numpy as np

    from ..synthetic import synth

    if kind == "nuclei":
        radius = getattr(args, "radius_range", None)
        density = 0.35 if args.density is None else args.density
        return synth.nuclei(shape, seed=seed, radius=radius, density=density)
    if kind == "lattice":
        offset = None
        if random_offset:
            offset = tuple(int(v) for v in np.random.default_rng(seed).integers(0, args.spacing, len(shape)))
        return synth.lattice(shape, args.spacing, radius=args.radius, offset=offset,
                             noise_std=args.noise, elastic_alpha=args.elastic, seed=seed)
    density = 0.1 if args.density is None else args.density
    check_fits(shape, args.n_objects, args.radius, args.radius_jitter)
    return synth.random_objects(shape, n_objects=args.n_objects, density=density,
                                radius=args.radius, radius_jitter=args.radius_jitter,
                                noise_std=args.noise, elastic_alpha=args.elastic, seed=seed)


def add_object_options(p) -> None:
    """Options that describe synthetic objects (used by ``synth`` and ``train --synthetic``)."""
    p.add_argument("--spacing", type=_args.positive_int, default=15,
                   help="lattice: distance between object centres (default 15)")
    p.add_argument("--radius", type=_args.positive_float, default=5.0, help="object radius (default 5)")
    p.add_argument("--radius-jitter", type=float, default=1.0,
                   help="random: radius varies by up to this much (default 1)")
    p.add_argument("--density", type=_args.positive_float, default=None,
                   help="random/nuclei: fraction of the image covered by objects "
                        "(default 0.1 / 0.35)")
    p.add_argument("--radius-range", type=_radius_range, default=None, metavar="LOW,HIGH",
                   help="nuclei: range of radii (default 4,25 in 2D, 4,12 in 3D)")
    p.add_argument("--n-objects", type=_args.positive_int, default=None,
                   help="random: exact number of objects (overrides --density)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="std of added Gaussian noise; objects have intensity ~1 (default 0)")
    p.add_argument("--elastic", type=float, default=0.0,
                   help="rms pixel displacement of an elastic deformation (default 0: none)")


def _radius_range(text: str) -> tuple[float, float]:
    import argparse

    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH like 4,25, got {text!r}") from None
    return low, high


def to_dtype(image, dtype: str):
    """``image`` as ``dtype``; integer types get a linear rescale of [min, max] to full range."""
    import numpy as np

    if dtype == "float32":
        return image.astype(np.float32)
    top = np.iinfo(dtype).max
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low if high > low else 1.0) * top
    return np.clip(np.round(scaled), 0, top).astype(dtype)


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    import tifffile

    from ..util._errors import ShiftSegError

    if args.seed < 0:
        raise ShiftSegError(f"--seed must be >= 0, got {args.seed}")
    shape = resolve_shape(args.ndim, args.shape)
    image, labels = generate(args.kind, args, shape, args.seed)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ShiftSegError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    label_dtype = np.uint16 if labels.max() <= np.iinfo(np.uint16).max else np.int32
    tifffile.imwrite(out / "image.tif", to_dtype(image, args.dtype), compression="zlib")
    tifffile.imwrite(out / "labels.tif", labels.astype(label_dtype), compression="zlib")
    print(f"wrote {out / 'image.tif'} and {out / 'labels.tif'}: shape {shape}, "
          f"{int(labels.max())} objects")
    return 0
