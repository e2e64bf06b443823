"""``shiftseg evaluate IMAGE [IMAGE ...] --labels L [L ...]``: score segmentations against labels.

Each image is segmented whole with the model (:func:`napari_shiftseg.inference.evaluate.segment_array`,
settings from the model file) and, with ``--baseline``, with Otsu + watershed in the same run.
Prints per image and overall: AP@0.5, AP averaged over IoU 0.5:0.05:0.9 (mAP), recall@0.5, false
splits, false merges, object counts and seconds; ``--json`` also writes all numbers.
"""

from __future__ import annotations

from . import _args

BASELINE = "otsu+watershed"


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="score a model (and the Otsu+watershed baseline) on images with labels",
        description="Segment images with a model (and optionally a classical Otsu threshold + "
                    "watershed baseline) and compare with ground-truth label images: AP@0.5, "
                    "mean AP over IoU 0.5-0.9, recall, false splits and merges, per image and "
                    "overall.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images (.tif, .npy, .zarr)")
    p.add_argument("--labels", nargs="+", required=True, metavar="L",
                   help="ground-truth label images, one per IMAGE, in the same order")
    p.add_argument("-m", "--model", default=None,
                   help="model file (.safetensors); default: the bundled model of the image's "
                        "dimensionality")
    p.add_argument("--baseline", action="store_true",
                   help="also run Otsu + watershed (sigma 1, min_distance 7) on every image")
    p.add_argument("--no-model", action="store_true",
                   help="score only the baseline (implies --baseline)")
    p.add_argument("--diameter", type=_args.diameter, default="auto", help=_args.DIAMETER_HELP)
    _args.add_channel(p)
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write all scores as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from ..files.io import read_image, read_spatial
    from ..imaging.classical import otsu_watershed
    from ..inference.evaluate import format_scores, model_method, score_methods
    from ..util._errors import ShiftSegError

    if len(args.labels) != len(args.images):
        raise ShiftSegError(f"got {len(args.images)} image(s) but {len(args.labels)} label "
                            "image(s); give one label image per image, in the same order")
    pairs = []
    for image_path, label_path in zip(args.images, args.labels):
        image = np.asarray(read_spatial(image_path, args.channel))
        labels = np.asarray(read_image(label_path))
        if not np.issubdtype(labels.dtype, np.integer):
            raise ShiftSegError(f"labels {label_path} must hold whole numbers (an instance id per "
                                f"pixel), got data type {labels.dtype}")
        if labels.shape != image.shape:
            raise ShiftSegError(f"labels {label_path} have shape {labels.shape} but image "
                                f"{image_path} has shape {image.shape}")
        if image.ndim not in (2, 3):
            raise ShiftSegError(f"image {image_path} must be 2D or 3D, got shape {image.shape}")
        pairs.append((Path(image_path).name, image, labels))

    methods = {}
    if not args.no_model:
        from ..network.modelio import load_bundled, load_model

        ndims = {image.ndim for _, image, _ in pairs}
        if args.model is not None:
            model = load_model(args.model, args.device)
            if ndims != {model.geometry.ndim}:
                raise ShiftSegError(f"the model is {model.geometry.ndim}D but the images are "
                                    f"{'/'.join(f'{d}D' for d in sorted(ndims))}")
            models = {model.geometry.ndim: model}
            label = Path(args.model).name
        else:
            models = {d: load_bundled(d, args.device) for d in ndims}
            label = "bundled model"
        by_ndim = {d: model_method(m, device=args.device, diameter=args.diameter)
                   for d, m in models.items()}
        methods[label] = lambda image: by_ndim[np.ndim(image)](image)
    if args.baseline or args.no_model:
        methods[BASELINE] = otsu_watershed

    rows, summary = score_methods(pairs, methods)
    print(format_scores(rows, summary))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
        print(f"wrote {out}")
    return 0
