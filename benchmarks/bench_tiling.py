"""Exact tiled vs whole-image inference: time ratio, FLOP ratio and max abs difference.

By default a random-weight 3D U-Net with l = 3 (f^l = 8, context 88) and 4 base channels
(``--model bundled``: the bundled 3D model, l = 2, 16 base channels), output tiles 64³,
128³, 256³. All tiles of a plan have the same shape and cost, so for plans with many tiles only
the first whole rows along the last axis (at least ``--max-tiles`` tiles) are timed and the time
is scaled to the whole plan (the table says so); the difference is measured on the tiles that
were computed. Both paths run one task at a time on all threads (dask's synchronous
scheduler), so the ratio compares work, not parallelism.

``--batch`` compares tiles per network call: ``1`` (one tile per call, the default before
automatic batching), ``auto`` (``batch_size=None``, today's default: one chunk per tile, up to
4 neighbouring tiles per call on the CPU) or an integer (``batch_size=k``: k tiles per call and
per chunk). Rounds interleave the whole image and every (tile, batch) pair; each round's tiled
time is divided by the same round's whole-image time, and the table shows the median of those
ratios with their range (min-max), so load that changes during the run shows as spread
instead of biasing one column. ``--busy N`` runs everything beside N spinning processes.

FLOP ratio = n_tiles · FLOPs(one tile's input window) / FLOPs(the whole image's input window)
(every (transposed) convolution, ``bench_gflops.network_flops``): the extra work the overlapping
windows force; "/ FLOP" = time ratio / FLOP ratio (1.0: tiles cost exactly their extra FLOPs).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tiling.py [--shape 256 256 512]
    python benchmarks/bench_tiling.py --tiles 64 --shape 128 128 256 --batch 1 auto --busy 4
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _load import busy  # noqa: E402 (benchmarks/ is on sys.path)
from bench_gflops import network_flops  # noqa: E402

from napari_shiftseg.inference.predict import _auto_batch, predict_embeddings, predict_plan, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig


def _net(args):
    if args.model == "bundled":
        from napari_shiftseg.network.modelio import load_bundled

        return load_bundled(3).net
    torch.manual_seed(0)
    return UNet(UNetConfig(geometry=UNetGeometry(ndim=3, levels=args.levels), base_channels=args.base))


def _batch(value: str):
    return None if value == "auto" else int(value)


def _spread(values) -> str:
    values = np.asarray(values)
    return f"{np.median(values):.2f} ({values.min():.2f}-{values.max():.2f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 512))
    parser.add_argument("--tiles", type=int, nargs="+", default=(64, 128, 256))
    parser.add_argument("--model", choices=("random", "bundled"), default="random")
    parser.add_argument("--levels", type=int, default=3, help="levels of the random model")
    parser.add_argument("--base", type=int, default=4, help="channels of the random model's first level")
    parser.add_argument("--batch", nargs="+", default=("auto",), help="tiles per call: 1, auto or k")
    parser.add_argument("--max-tiles", type=int, default=4, help="tiles timed per plan (whole rows)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--busy", type=int, default=0, help="spinning processes beside the benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = _net(args)
    shape = tuple(args.shape)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    norm = (0.0, 1.0)

    plans = {tile: predict_plan(image, net, tile, device="cpu") for tile in args.tiles}
    boxes = {}
    for tile, plan in plans.items():
        # whole rows along the last axis (so every batch of tiles is complete), then whole planes
        counts, box = list(plan.grid_shape), [1] * plan.ndim
        box[-1] = counts[-1]
        left = max(1, -(-args.max_tiles // counts[-1]))
        for axis in reversed(range(plan.ndim - 1)):
            box[axis] = min(counts[axis], left)
            left = max(1, -(-left // box[axis]))
        boxes[tile] = (int(np.prod(box)), tuple(slice(0, a.write(b - 1).stop) for a, b in zip(plan.axes, box)))
    configs = [(tile, batch) for tile in args.tiles for batch in args.batch]
    t_whole, times, parts = [], {c: [] for c in configs}, {}
    load = []
    with busy(args.busy):
        predict_whole(image, net, device="cpu", normalization=norm)  # warm-up: oneDNN's kernels
        for _ in range(args.repeat):
            load.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            whole = predict_whole(image, net, device="cpu", normalization=norm)
            t_whole.append(time.perf_counter() - t0)
            for tile, batch in configs:
                emb = predict_embeddings(image, net, tile, device="cpu", normalization=norm,
                                         batch_size=_batch(batch))
                region = boxes[tile][1]
                t0 = time.perf_counter()
                parts[tile, batch] = emb[(slice(None),) + region].compute(scheduler="sync")
                times[tile, batch].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    peak = np.abs(whole).max()

    g = net.config.geometry
    flops_whole = network_flops(net, g.tile_input_size(g.cover(shape)))
    whole_amp = np.prod([g.tile_input_size(c) / s for c, s in zip(g.cover(shape), shape)])
    t_whole = np.asarray(t_whole)
    name = (f"bundled 3D (l={g.levels}, base {net.config.base_channels})" if args.model == "bundled"
            else f"random 3D U-Net l={g.levels}, base {args.base} ch")
    print(f"# exact tiled vs whole image, {name} (f^l={max(g.grids)}, "
          f"context {g.context}), image {shape}, {args.threads} threads, {args.busy} busy processes, "
          f"{args.repeat} interleaved rounds, load avg {min(load):.1f}-{max(load):.1f}, torch {torch.__version__}")
    print(f"# whole image: {_spread(t_whole)} s (median (min-max)); ratios: per round, tiled / whole of "
          f"the same round, median (min-max)")
    print("| tile | batch (per call) | tiles | timed | input/output voxels | FLOP ratio | tiled (s) "
          "| time ratio | / FLOP ratio | max abs diff (rel) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| whole | 1 | 1 | 1 | {whole_amp:.2f} | 1.00 | {np.median(t_whole):.2f} | 1.00 | - | 0 |")
    for tile, batch in configs:
        plan = plans[tile]
        n_timed, region = boxes[tile]
        diff = float(np.abs(parts[tile, batch] - whole[(slice(None),) + region]).max())
        scaled = np.asarray(times[tile, batch]) * plan.n_tiles / n_timed
        flop_ratio = plan.n_tiles * network_flops(net, plan.window_shape) / flops_whole
        ratios = scaled / t_whole
        per_call = _auto_batch(net, plan, torch.device("cpu"), False) if batch == "auto" else batch
        print(f"| {'x'.join(map(str, plan.tile))} | {batch}{f' ({per_call})' if batch == 'auto' else ''} "
              f"| {plan.n_tiles} | {n_timed}{'' if n_timed == plan.n_tiles else ' (scaled)'} "
              f"| {plan.amplification:.2f} | {flop_ratio:.2f} | {np.median(scaled):.2f} "
              f"| {_spread(ratios)} | {_spread(ratios / flop_ratio)} | {diff:.1e} ({diff / peak:.1e}) |")


if __name__ == "__main__":
    main()
