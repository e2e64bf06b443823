"""Exact tiled vs whole-image inference: time ratio and max abs difference.

A random-weight 3D U-Net with l = 3 (f^l = 8, context 88), output tiles 64³, 128³, 256³.
All tiles of a plan have the same shape and cost, so for plans with many tiles only the first
``--max-tiles`` are timed and the time is scaled to the whole plan (the table says so); the
difference is measured on the tiles that were computed. Both paths run one network call at a
time on all threads (dask's synchronous scheduler), so the ratio compares work, not
parallelism.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tiling.py [--shape 256 256 512]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from bench_gflops import network_flops  # noqa: E402 (benchmarks/ is on sys.path)

from napari_shiftseg.inference.predict import predict_embeddings, predict_plan, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 512))
    parser.add_argument("--tiles", type=int, nargs="+", default=(64, 128, 256))
    parser.add_argument("--base", type=int, default=4, help="channels of the first level")
    parser.add_argument("--max-tiles", type=int, default=4, help="tiles timed per plan")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (fastest kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=3, levels=3), base_channels=args.base))
    shape = tuple(args.shape)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    norm = (0.0, 1.0)

    # Rounds interleave the whole image and every tile size, and each keeps its fastest
    # round: on a shared machine the load changes while the benchmark runs.
    t_whole, t_parts, parts = np.inf, {}, {}
    plans = {tile: predict_plan(image, net, tile) for tile in args.tiles}
    boxes = {}
    for tile, plan in plans.items():
        # the first k tiles along the last axis, then whole rows: a box of complete tiles
        counts, box, left = list(plan.grid_shape), [1] * plan.ndim, min(args.max_tiles, plan.n_tiles)
        for axis in reversed(range(plan.ndim)):
            box[axis] = min(counts[axis], left)
            left = max(1, left // box[axis])
        boxes[tile] = (int(np.prod(box)), tuple(slice(0, a.write(b - 1).stop) for a, b in zip(plan.axes, box)))
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        whole = predict_whole(image, net, device="cpu", normalization=norm)
        t_whole = min(t_whole, time.perf_counter() - t0)
        for tile in args.tiles:
            emb = predict_embeddings(image, net, tile, device="cpu", normalization=norm)
            region = boxes[tile][1]
            t0 = time.perf_counter()
            parts[tile] = emb[(slice(None),) + region].compute(scheduler="sync")
            t_parts[tile] = min(t_parts.get(tile, np.inf), time.perf_counter() - t0)
    peak = np.abs(whole).max()
    rows = []
    for tile, plan in plans.items():
        n_timed, region = boxes[tile]
        diff = float(np.abs(parts[tile] - whole[(slice(None),) + region]).max())
        rows.append((plan, n_timed, t_parts[tile] * plan.n_tiles / n_timed, diff))

    g = net.config.geometry
    flops_whole = network_flops(net, g.tile_input_size(g.cover(shape)))
    whole_amp = np.prod([net.config.geometry.tile_input_size(c) / s
                         for c, s in zip(net.config.geometry.cover(shape), shape)])
    print(f"# exact tiled vs whole image, 3D U-Net l=3 (f^l=8, context {net.config.geometry.context}), "
          f"base {args.base} ch, image {shape}, {args.threads} threads, best of {args.repeat} rounds, "
          f"load avg {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print("| tile | tiles | timed | input/output voxels | FLOP ratio | tiled (s) | whole (s) | time ratio "
          "| max abs diff (rel) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| whole | 1 | 1 | {whole_amp:.2f} | 1.00 | - | {t_whole:.1f} | 1.00 | 0 |")
    for plan, n_timed, t_tiled, diff in rows:
        print(f"| {'x'.join(map(str, plan.tile))} | {plan.n_tiles} | {n_timed}"
              f"{'' if n_timed == plan.n_tiles else ' (scaled)'} | {plan.amplification:.2f} | "
              f"{plan.n_tiles * network_flops(net, plan.window_shape) / flops_whole:.2f} | "
              f"{t_tiled:.1f} | {t_whole:.1f} | {t_tiled / t_whole:.2f} | {diff:.1e} ({diff / peak:.1e}) |")


if __name__ == "__main__":
    main()
