"""``shiftseg check IMAGE --tile N``: is tiled inference identical to whole-image inference?

Prints the largest absolute difference between the stitched tiles and one whole-image pass
(0 up to float rounding for exact tiling with a valid-convolution model; THEORY.md, result 3).
With ``--region`` only that part is compared, against the whole-image pass of a crop around it,
so big images stay cheap.
"""

from __future__ import annotations

import argparse
import math

from . import _args
from .segment import _tile

#: Differences below this are float rounding (convolution algorithms differ with input size).
ROUNDING = 1e-3


def _region(text: str) -> tuple[slice, ...]:
    """'0:256,100:300' -> (slice(0, 256), slice(100, 300))."""
    out = []
    try:
        for part in text.split(","):
            lo, hi = part.split(":")
            out.append(slice(int(lo) if lo else None, int(hi) if hi else None))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a region like 0:256,0:256, got {text!r}") from None
    return tuple(out)


def add_parser(sub):
    p = sub.add_parser("check", help="max |stitched - whole-image| difference for a tile size and mode",
                       description="Compare tiled (stitched) inference with whole-image inference.")
    p.add_argument("image", help="input image: .tif/.tiff, .zarr (OME-Zarr too) or .npy")
    p.add_argument("-m", "--model", help="model file (.safetensors); default: the bundled model")
    p.add_argument("--tile", type=_tile, default=128, help="output tile per axis (default 128)")
    p.add_argument("--mode", choices=("exact", "naive", "blend"), default="exact",
                   help="tiling mode (default exact)")
    p.add_argument("--region", type=_region, default=None,
                   help="compare only this part, e.g. 0:256,0:256 (default: the whole image)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    _args.add_channel(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..files.io import read_spatial
    from ..inference.diagnostics import stitch_check
    from ..inference.predict import predict_plan
    from ..inference.segment import _load_model
    from ..util._errors import ShiftSegError

    image = read_spatial(args.image, args.channel)
    if image.ndim not in (2, 3):
        raise ShiftSegError(f"the image must be 2D or 3D, got shape {tuple(image.shape)}")
    model = _load_model(args.model, image.ndim)
    if model.geometry.ndim != image.ndim:
        raise ShiftSegError(f"the model is {model.geometry.ndim}D but the image is {image.ndim}D; "
                            f"use a {image.ndim}D model")
    plan = predict_plan(image, model, tile=args.tile, mode=args.mode)
    difference = stitch_check(image, model, args.tile, mode=args.mode, region=args.region,
                              device=args.device)
    if not math.isfinite(difference):
        raise ShiftSegError(f"the comparison gave {difference} (NaN or infinite outputs): the "
                            "model is broken or the image holds extreme values")
    if difference == 0:
        verdict = "exact"
    elif difference < ROUNDING:
        verdict = "exact up to float rounding"
    else:
        verdict = "NOT exact"
    print(f"tile {plan.tile} ({plan.n_tiles} tiles, mode {args.mode}): "
          f"max |stitched - whole| = {difference:.3g} ({verdict})")
    return 0
