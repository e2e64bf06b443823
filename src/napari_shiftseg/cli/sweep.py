"""``shiftseg sweep IMAGE --labels LABELS -m MODEL --tiles A:B[:STEP]``: the poster's tile-size sweep.

For every output tile size: tile-and-stitch inference, clustering of the stitched embeddings,
false splits / false merges / AP@0.5 against the labels and the max abs difference to
whole-image inference. Writes ``DIR/sweep.csv``, ``sweep.json`` and ``sweep.png`` (false splits
and AP@0.5 against tile size, n·f^l sizes marked).
"""

from __future__ import annotations

from . import _args


def add_parser(sub):
    p = sub.add_parser(
        "sweep", help="false splits and AP@0.5 against output tile size (the poster's plot)",
        description="Tile-and-stitch IMAGE for every output tile size in --tiles, segment the "
                    "stitched embeddings and score them against --labels. naive tiling shows "
                    "minima at multiples of f^l; exact tiling is flat.",
    )
    p.add_argument("image", help="image file (.tif, .npy, .zarr), 2D or 3D like the model")
    p.add_argument("--labels", required=True, help="ground-truth instance labels, same shape")
    p.add_argument("-m", "--model", default=None,
                   help="model file (.safetensors); default: the bundled model for the image's ndim")
    p.add_argument("--tiles", required=True,
                   help="output tile sizes: A:B (inclusive), A:B:STEP or a list A,B,C")
    p.add_argument("--mode", choices=("naive", "exact", "both"), default="naive",
                   help="naive: tiles as given (default); exact: snapped to n*f^l on the global "
                        "grid; both: one after the other")
    p.add_argument("--bandwidth", type=_args.positive_float, default=None,
                   help="mean-shift bandwidth (default: the model's)")
    p.add_argument("--min-size", type=int, default=None,
                   help="drop objects smaller than this (voxels; default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="mean-shift seed (default 0)")
    p.add_argument("-o", "--output", default="shiftseg-sweep", metavar="DIR",
                   help="output directory (default ./shiftseg-sweep)")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    import numpy as np

    from ..files.io import read_image, read_spatial
    from ..network.modelio import bundled_model_path, load_model
    from ..reproduce import figures
    from ..reproduce.sweep import format_summary, format_table, parse_tiles, run_sweep, summarize, write_csv
    from ..util._errors import ShiftSegError

    tiles = parse_tiles(args.tiles)
    image = read_spatial(args.image)
    labels = np.asarray(read_image(args.labels))
    if image.ndim not in (2, 3):
        raise ShiftSegError(f"the image must be 2D or 3D, got shape {tuple(image.shape)}")
    model = load_model(args.model or bundled_model_path(image.ndim))
    image = np.asarray(image, dtype=np.float32)
    modes = ("naive", "exact") if args.mode == "both" else (args.mode,)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print(f"sweep {args.image} ({'x'.join(map(str, image.shape))}) with {model.name}: "
          f"{len(tiles)} tile sizes {tiles[0]}..{tiles[-1]}, f^l = {model.geometry.grid}, "
          f"mode {args.mode} -> {out}", file=sys.stderr)

    def progress(done, total, message):
        print(f"  [{done}/{total}] {message}", file=sys.stderr, flush=True)

    rows, wholes = [], {}
    for mode in modes:
        result = run_sweep(image, labels, model, tiles, mode=mode, device=args.device,
                           bandwidth=args.bandwidth, min_size=args.min_size, seed=args.seed,
                           progress=progress)
        rows += result["rows"]
        wholes[mode] = result["whole"]
    print(format_table(rows))
    whole = next(iter(wholes.values()))
    summary = summarize(rows)
    print(format_summary(summary))
    print(f"whole image: {whole['false_splits']} false splits, {whole['false_merges']} false "
          f"merges, AP@0.5 {whole['ap50']:.3f} ({whole['n_pred']} objects, {whole['n_gt']} in labels)")
    csv_path = write_csv(rows, out / "sweep.csv")
    info = {"image": str(args.image), "labels": str(args.labels), "model": model.name,
            "grid": model.geometry.grid, "tiles": tiles, "modes": list(modes), "whole": whole,
            "summary": summary,
            "rows": rows}
    (out / "sweep.json").write_text(json.dumps(info, indent=2, default=str))
    png = figures.sweep_figure(rows, model.geometry.grid, out / "sweep.png",
                               title=f"{Path(args.image).name}, whole image AP50 {whole['ap50']:.2f}")
    print(f"wrote {csv_path}, {out / 'sweep.json'}, {png}")
    return 0
