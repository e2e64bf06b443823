"""``shiftseg segment IMAGE -o OUT.zarr``: resumable tiled segmentation into an OME-Zarr group.

Writes ``embeddings``, ``foreground`` and ``labels/instances/0`` with OME-Zarr (NGFF 0.5, or
0.4 with ``--ngff 0.4``) metadata (see :mod:`napari_shiftseg.inference.segment`, :mod:`napari_shiftseg.files.ngff`).
Interrupted runs (Ctrl-C, a crash, a killed worker) keep every finished tile; running the same
command again resumes. ``--scheduler tcp://HOST:PORT`` runs on an existing dask.distributed
cluster (its workers must see the output path), ``--workers N`` starts a local one.

A file whose metadata names a time axis (an ImageJ hyperstack TYX/TZYX, an OME-Zarr ``time``
axis) is segmented time point by time point into one output whose labels have the time axis
first and ids numbered on across time (:mod:`napari_shiftseg.inference.series`).
"""

from __future__ import annotations

import argparse
import contextlib

from . import _args


def _tile(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    values = _args.shape(text)
    return values[0] if len(values) == 1 else values


def _resources(text: str) -> dict:
    """'GPU=1' or 'GPU=1,MEMORY=4e9' -> {"GPU": 1.0, ...}."""
    out = {}
    for part in text.split(","):
        name, _, amount = part.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name.strip() or value <= 0:
            raise argparse.ArgumentTypeError(f"expected resources like GPU=1, got {text!r}")
        out[name.strip()] = value
    return out


def add_parser(sub):
    p = sub.add_parser(
        "segment", help="segment an image into a zarr group (embeddings, foreground, labels); resumable",
        description="Tile-and-stitch instance segmentation of IMAGE (.tif, .zarr, OME-Zarr, .npy) "
                    "into OUT.zarr. Run the same command again to resume an interrupted run. A "
                    "file with a time axis (ImageJ TYX/TZYX, OME-Zarr time) is segmented time "
                    "point by time point into one labels array, ids numbered on across time.",
    )
    p.add_argument("image", help="input image: .tif/.tiff, .zarr (OME-Zarr too) or .npy")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr", help="output zarr directory")
    p.add_argument("-m", "--model", help="model file (.safetensors) or bundled:2 / bundled:3; default: "
                                         "the bundled model for the image's dimensionality. A 2D "
                                         "model on a 3D image runs slice by slice, and the "
                                         "objects are linked across z")
    p.add_argument("--tile", type=_tile, default=128,
                   help="output tile per axis, e.g. 128 or 32,128,128 (snapped to n*f^l; default 128), "
                        "or 'auto': the largest that fits the device's memory")
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
    p.add_argument("--diameter", type=_args.diameter, default="auto", help=_args.DIAMETER_HELP)
    _args.add_channel(p)
    voxels = p.add_mutually_exclusive_group()
    voxels.add_argument("--isotropic", action="store_const", const=True, default="auto",
                        help="resample to cubic voxels first (e.g. a z step 3x the pixel size gets "
                             "3x the planes), using the file's voxel size or --voxel-size. A 3D "
                             "model does this by default whenever the voxel size is known and "
                             "anisotropic; labels stay on the image's grid")
    voxels.add_argument("--no-isotropic", dest="isotropic", action="store_const", const=False,
                        help="keep the stack's voxels as they are, even when anisotropic")
    p.add_argument("--voxel-size", type=_args.voxel_size, default=None, metavar="Z,Y,X",
                   help="voxel size per axis (any unit), when the file does not record it")
    p.add_argument("--table", metavar="OUT.csv", default=None,
                   help="also write one row per object: size (in the file's voxel units when it "
                        "records them), centroid, bounding box, mean/max intensity (blockwise)")
    p.add_argument("--tile-resources", type=_resources, default=None, metavar="NAME=N",
                   help="with --scheduler/--scheduler-file: dask resources each network tile needs, "
                        "e.g. GPU=1 (start GPU workers with `dask worker ... --resources GPU=1`); "
                        "clustering runs on any worker")
    p.add_argument("--ngff", choices=("0.5", "0.4"), default="0.5",
                   help="OME-Zarr version of the output: 0.5 (zarr v3, default) or 0.4 (zarr v2, "
                        "for older readers)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mean-shift subsample (default 0)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--workers", type=_args.positive_int, metavar="N",
                       help="start a local cluster of N worker processes")
    where.add_argument("--scheduler-file", metavar="FILE",
                       help="dask.distributed scheduler file (from `dask scheduler "
                            "--scheduler-file FILE`, e.g. in a SLURM job; see docs/CLUSTER.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT.zarr instead of resuming it (and an existing --table file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _options(args):
    from ..inference.segment_options import ClusterOptions, SegmentOptions

    return SegmentOptions(
        tile=args.tile, device=args.device, mode=args.mode, bandwidth=args.bandwidth,
        min_size=args.min_size, fg_threshold=args.fg_threshold,
        merge_distance=args.merge_distance, clustering=ClusterOptions(seed=args.seed),
        diameter=args.diameter, channel=_args.picked_channels(args), isotropic=args.isotropic,
        voxel_size=args.voxel_size, overwrite=args.overwrite, ngff=args.ngff,
        tile_resources=args.tile_resources)


@contextlib.contextmanager
def _client(args):
    """The dask client the flags ask for (None: in process), closed afterwards together with a
    local cluster it started (``--workers``)."""
    from ..inference.cluster import connect

    client = connect(args.scheduler, args.workers, scheduler_file=args.scheduler_file)
    try:
        yield client
    finally:
        if client is not None:
            cluster = client.cluster if args.workers else None
            client.close()
            if cluster is not None:
                cluster.close()


def run(args) -> int:
    import sys

    from ..files.io import time_points
    from ..inference.segment import ATTRS
    from ..inference.session import Session

    if time_points(args.image) > 1:
        return run_series(args)
    if args.table:  # before anything runs: never replace the input, a model or a file unasked
        from ..imaging.measure import check_table_path

        check_table_path(args.table, args.overwrite, protect=(args.image, args.model))
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

    with _client(args) as client:
        try:
            options = _options(args)
            group = Session(args.image, args.model, options).run_to_zarr(
                args.output, lambda done, total, _: progress(done, total), stage=stage, client=client)
        finally:
            if bar is not None:
                bar.close()
    info = dict(group.attrs[ATTRS])
    if info.get("size_note"):
        print(info["size_note"])
    print(f"{args.output}: {info.get('n_objects', 0)} objects in 'labels'; "
          f"'embeddings' {tuple(group['embeddings'].shape)}, {info.get('tiles')} tiles")
    if info.get("warning"):
        print(info["warning"], file=sys.stderr)
    if info.get("tile_note"):
        print(f"note: {info['tile_note']}")
    if info.get("embedding_args", {}).get("per_slice"):
        print("the 2D model ran slice by slice; objects are linked across z where one embedding "
              "cluster touches itself in neighbouring slices")
    if args.table:
        write_object_table(group, args.image, _args.picked_channels(args), args.table)
        print(f"wrote {args.table}")
    if info.get("resampled"):
        shape = "x".join(map(str, info["resampled"]["working_shape"]))
        print(f"the network ran on the image resampled to {shape} (the object size the model "
              "learnt); 'labels' are on the image's grid, 'labels_resampled' on that one")
    return 0


def run_series(args) -> int:
    """A time series: every time point on its own, one line each, then the total."""
    import sys

    from ..inference.segment import ATTRS
    from ..inference.series import frames_path
    from ..inference.session import Session
    from ..util._errors import ShiftSegError

    if args.table:
        raise ShiftSegError(f"{args.image} is a time series: --table measures one image; leave it "
                            "out (each time point's output in the work folder can be measured)")
    options = _options(args)  # checked before a cluster starts
    bar, doing = None, "tiles"

    def progress(done, total):  # the tiles of the time point being segmented
        nonlocal bar
        if args.quiet or (bar is None and done >= total):
            return  # a time point finished earlier gets no bar
        if bar is None:
            bar = _args.progress_bar(total=total, initial=done, unit="tile", desc=doing)
        bar.update(done - bar.n)

    def stage(text):  # "time point 2/5: tiles"
        nonlocal doing
        doing = text
        if bar is not None:
            bar.set_description(text)

    def time_point(point):
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        ids = f" (ids {point.first_id}-{point.last_id})" if point.objects else ""
        earlier = ", finished earlier" if point.reused else ""
        print(f"time point {point.index + 1}/{point.of}: {point.objects} objects{ids}{earlier}", flush=True)
        if point.warning:
            print(f"time point {point.index + 1}/{point.of}: {point.warning}", file=sys.stderr)

    with _client(args) as client:
        try:
            group = Session(args.image, args.model, options).run_to_zarr(
                args.output, lambda done, total, _: progress(done, total), stage=stage, client=client,
                time_point=time_point)
        finally:
            if bar is not None:
                bar.close()
    info = dict(group.attrs[ATTRS])
    n = info.get("time_points", group["labels/instances/0"].shape[0])
    print(f"{args.output}: {info.get('n_objects', 0)} objects over {n} time points in 'labels' "
          f"{tuple(group['labels/instances/0'].shape)}, ids numbered on across time; each time "
          f"point's own output (embeddings, for resuming and re-clustering) is kept in "
          f"{frames_path(args.output).name}")
    if info.get("tile_note"):
        print(f"note: {info['tile_note']}")
    return 0


def write_object_table(group, image_path, channel, out) -> None:
    """Measure the labels of a finished output against its image, blockwise, into a CSV."""
    import dask.array as da

    from ..files.io import read_spatial
    from ..files.ngff import LABELS
    from ..imaging.measure import measure, write_table
    from ..inference.segment import ATTRS

    info = dict(group.attrs[ATTRS])
    labels = da.from_zarr(group[LABELS])
    image = read_spatial(image_path, channel)
    several = isinstance(channel, list)  # channel-first: (C, *spatial)
    image = image if isinstance(image, da.Array) else da.from_array(
        image, chunks=((image.shape[0],) if several else ()) + labels.chunksize)
    embeddings = None
    if not info.get("resampled"):  # embeddings on the image's grid: their mean per object too
        emb = da.from_zarr(group["embeddings"])
        embeddings = emb[:emb.shape[0] - int("foreground" in group)]
    write_table(measure(labels, image, spacing=info.get("voxel_size"), embeddings=embeddings,
                        channel_axis=0 if several else None), out)
