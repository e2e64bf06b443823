"""Our exact tiling (valid U-Net) vs MONAI's Gaussian sliding window (same-padded U-Net).

Both networks have the same layers (3D, l = 3, same channels); ours uses valid convolutions
and exact tile-and-stitch, MONAI's ``sliding_window_inference`` (overlap 0.25, Gaussian
blending, as nnU-Net) runs the same U-Net with zero "same" padding. For each, the table gives
the time for the volume and the max abs difference to that network's own whole-image output:
ours is exact (0 up to float rounding); blending only hides seams.

MONAI is a benchmark-only dependency (``pip install -c ci/constraints.txt monai``); without it
the MONAI rows fall back to our own ``mode="blend"`` (same scan interval, same Gaussian), and
the table says so.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_monai.py
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
from napari_shiftseg.network.unet import UNet, UNetConfig, memory_format


def make_net(padding: str, base: int) -> UNet:
    torch.manual_seed(0)  # same weights: the layers have the same shapes for both paddings
    geometry = UNetGeometry(ndim=3, levels=3, padding=padding)
    return UNet(UNetConfig(geometry=geometry, base_channels=base)).eval()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 256, 256))
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--base", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape, tile = tuple(args.shape), args.tile
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    norm = (0.0, 1.0)  # the image is already in [0, 1]; both paths see identical input
    valid, same = make_net("valid", args.base), make_net("same", args.base)
    mf = memory_format(3)
    same.to(memory_format=mf)

    rows = []
    # ours: exact tiling of the valid net, one tile at a time (sync) on all threads
    plan = predict_plan(image, valid, tile)
    ours, t_ours = timed(lambda: predict_embeddings(image, valid, tile, device="cpu", normalization=norm)
                         .compute(scheduler="sync"))
    ref, t_ref = timed(lambda: predict_whole(image, valid, device="cpu", normalization=norm))
    rows.append(("ours: exact tiles, valid U-Net", plan.n_tiles, plan.window_shape,
                 plan.n_tiles * network_flops(valid, plan.window_shape), t_ours, t_ref,
                 float(np.abs(ours - ref).max()), float(np.abs(ref).max())))

    x = torch.from_numpy(image)[None, None].contiguous(memory_format=mf)
    try:
        from monai.inferers import sliding_window_inference

        def predictor(batch):
            return same(batch.contiguous(memory_format=mf))

        with torch.inference_mode():
            sw, t_sw = timed(lambda: sliding_window_inference(
                x, roi_size=(tile,) * 3, sw_batch_size=1, predictor=predictor, overlap=0.25,
                mode="gaussian", sigma_scale=0.125)[0].numpy())
        import monai

        label = f"MONAI {monai.__version__} sliding window, same-padded U-Net"
        n_windows = int(np.prod([1 if s <= tile else -(-(s - tile) // int(tile * 0.75)) + 1 for s in shape]))
    except ImportError:
        blend_plan = predict_plan(image, same, tile, mode="blend")
        sw, t_sw = timed(lambda: predict_embeddings(image, same, tile, device="cpu", mode="blend",
                                                    normalization=norm).compute(scheduler="sync"))
        label = "our blend mode (MONAI not installed), same-padded U-Net"
        n_windows = blend_plan.n_tiles
    with torch.inference_mode():
        sref, t_sref = timed(lambda: same(x)[0].numpy())
    rows.append((label + ", overlap 0.25, gaussian", n_windows, (tile,) * 3,
                 n_windows * network_flops(same, (tile,) * 3), t_sw, t_sref,
                 float(np.abs(sw - sref).max()), float(np.abs(sref).max())))

    voxels = np.prod(shape)
    print(f"# image {shape}, output tile {tile}³, 3D U-Net l=3 base {args.base} ch, {args.threads} threads, "
          f"load avg {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print("| method | windows | window | GFLOP | time (s) | Mvoxel/s | whole image (s) | max abs diff to whole (rel) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, n, window, flops, t, t_whole, diff, peak in rows:
        size = "x".join(map(str, window))
        print(f"| {label} | {n} | {size} | {flops / 1e9:.0f} | {t:.1f} | {voxels / t / 1e6:.2f} | "
              f"{t_whole:.1f} | {diff:.1e} ({diff / peak:.1e}) |")


if __name__ == "__main__":
    main()
