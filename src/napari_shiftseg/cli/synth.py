"""``shiftseg synth lattice|random``: write a synthetic image and its labels as TIFF files.

Writes ``DIR/image.tif`` and ``DIR/labels.tif`` (zlib-compressed). Labels are uint16 when the
ids fit, int32 otherwise. ``--dtype uint8|uint16`` stores the image rescaled linearly from its
[min, max] to the full integer range (like a camera would), which keeps files small; the
normalisation used for training and inference is percentile-based, so the scale is irrelevant.
"""

from __future__ import annotations

from . import _args

DEFAULT_SHAPES = {2: (256, 256), 3: (64, 128, 128)}


def add_parser(sub):
    p = sub.add_parser(
        "synth", help="write synthetic disks/spheres (image.tif + labels.tif) for training or tests",
        description="Write DIR/image.tif and DIR/labels.tif with synthetic disks (2D) or "
                    "spheres (3D): on a lattice (the paper's periodic data) or placed at random.",
    )
    p.add_argument("kind", choices=("lattice", "random"), help="lattice: identical objects on a "
                   "square/cubic grid; random: non-overlapping objects with jittered size/intensity")
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
    from .._errors import ShiftSegError

    if shape is None:
        return DEFAULT_SHAPES[ndim or 2]
    if len(shape) not in (2, 3):
        raise ShiftSegError(f"--shape {shape} must have 2 or 3 sizes")
    if ndim is not None and len(shape) != ndim:
        raise ShiftSegError(f"--shape {shape} is {len(shape)}D but --ndim is {ndim}")
    return shape


def generate(kind: str, args, shape, seed: int, random_offset: bool = False):
    """(image, labels) for the synth options in ``args`` (shared with ``shiftseg train``).

    ``random_offset`` moves the lattice by a seed-dependent offset, so that images drawn for
    training are not all the same picture.
    """
    import numpy as np

    from .. import synth

    if kind == "lattice":
        offset = None
        if random_offset:
            offset = tuple(int(v) for v in np.random.default_rng(seed).integers(0, args.spacing, len(shape)))
        return synth.lattice(shape, args.spacing, radius=args.radius, offset=offset,
                             noise_std=args.noise, elastic_alpha=args.elastic, seed=seed)
    return synth.random_objects(shape, n_objects=args.n_objects, density=args.density,
                                radius=args.radius, radius_jitter=args.radius_jitter,
                                noise_std=args.noise, elastic_alpha=args.elastic, seed=seed)


def add_object_options(p) -> None:
    """Options that describe synthetic objects (used by ``synth`` and ``train --synthetic``)."""
    p.add_argument("--spacing", type=_args.positive_int, default=15,
                   help="lattice: distance between object centres (default 15)")
    p.add_argument("--radius", type=_args.positive_float, default=5.0, help="object radius (default 5)")
    p.add_argument("--radius-jitter", type=float, default=1.0,
                   help="random: radius varies by up to this much (default 1)")
    p.add_argument("--density", type=_args.positive_float, default=0.1,
                   help="random: fraction of the image covered by objects (default 0.1)")
    p.add_argument("--n-objects", type=_args.positive_int, default=None,
                   help="random: exact number of objects (overrides --density)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="std of added Gaussian noise; objects have intensity ~1 (default 0)")
    p.add_argument("--elastic", type=float, default=0.0,
                   help="rms pixel displacement of an elastic deformation (default 0: none)")


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

    from .._errors import ShiftSegError

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
