"""``shiftseg segment IMAGE -o OUT.zarr``: resumable tiled segmentation into a zarr group.

Writes ``embeddings``, ``foreground`` and ``labels`` (see :mod:`napari_shiftseg.segment`).
Interrupted runs (Ctrl-C, a crash, a killed worker) keep every finished tile; running the same
command again resumes. ``--scheduler tcp://HOST:PORT`` runs on an existing dask.distributed
cluster (its workers must see the output path), ``--workers N`` starts a local one.
"""

from __future__ import annotations

from . import _args


def _tile(text: str):
    values = _args.shape(text)
    return values[0] if len(values) == 1 else values


def add_parser(sub):
    p = sub.add_parser(
        "segment", help="segment an image into a zarr group (embeddings, foreground, labels); resumable",
        description="Tile-and-stitch instance segmentation of IMAGE (.tif, .zarr, OME-Zarr, .npy) "
                    "into OUT.zarr. Run the same command again to resume an interrupted run.",
    )
    p.add_argument("image", help="input image: .tif/.tiff, .zarr (OME-Zarr too) or .npy")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr", help="output zarr directory")
    p.add_argument("-m", "--model", help="model file (.safetensors); default: the bundled model for "
                                         "the image's dimensionality")
    p.add_argument("--tile", type=_tile, default=128,
                   help="output tile per axis, e.g. 128 or 32,128,128 (snapped to n*f^l; default 128)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--mode", choices=("exact", "naive", "blend"), default="exact",
                   help="tiling: exact (default) or the inexact naive/blend for comparison")
    p.add_argument("--bandwidth", type=_args.positive_float, default=None,
                   help="mean-shift bandwidth in embedding units (default: the model's recorded value)")
    p.add_argument("--min-size", type=int, default=None,
                   help="drop objects with fewer voxels (default: the model's recorded value)")
    p.add_argument("--fg-threshold", type=float, default=None,
                   help="foreground probability threshold (default: the model's recorded value)")
    p.add_argument("--merge-distance", type=float, default=None,
                   help="merge touching fragments whose mean embeddings are closer than this "
                        "(default: the model's recorded value; 0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mean-shift subsample (default 0)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--workers", type=_args.positive_int, metavar="N",
                       help="start a local cluster of N worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.zarr instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    from ..segment import ATTRS, connect, segment_to_zarr

    client = connect(args.scheduler, args.workers)
    bar = None

    def progress(done, total):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = _args.progress_bar(total=total, initial=done, unit="tile", desc="tiles")
        bar.update(done - bar.n)  # update, not refresh: it honours the bar's interval

    def stage(name):
        if bar is not None and name != "tiles":
            bar.set_description(name)
        elif not args.quiet and name != "tiles":
            print(f"{name}...", file=sys.stderr)

    try:
        group = segment_to_zarr(
            args.image, args.output, model=args.model, tile=args.tile, device=args.device,
            mode=args.mode, bandwidth=args.bandwidth, min_size=args.min_size,
            fg_threshold=args.fg_threshold, merge_distance=args.merge_distance, seed=args.seed, progress=progress, client=client,
            overwrite=args.overwrite, stage=stage)
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            cluster = client.cluster if args.workers else None
            client.close()
            if cluster is not None:
                cluster.close()
    info = dict(group.attrs[ATTRS])
    print(f"{args.output}: {info.get('n_objects', 0)} objects in 'labels'; "
          f"'embeddings' {tuple(group['embeddings'].shape)}, {info.get('tiles')} tiles")
    return 0
