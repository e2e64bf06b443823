"""Achieved GFLOP/s of tiled inference vs torch's own convolution throughput.

FLOPs are counted analytically from the layers: every (transposed) convolution costs
``2 · C_in · C_out · k^d`` per output voxel (transposed: per input voxel, ``k = f``), with the
tensor shapes taken from a forward pass on the ``meta`` device (shapes only, no arithmetic).
Pooling, ReLU, cropping and concatenation are not counted. The reference is one bare
``ConvNd`` of each level's width on a tensor of that level's size, timed the same way, so the
last column says how close the whole pipeline (tile gathering, normalisation, U-Net,
stitching) gets to what torch's convolutions alone reach on this machine.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_gflops.py
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from napari_shiftseg.inference.predict import predict_embeddings, predict_plan, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig, memory_format


def network_flops(net: UNet, input_shape) -> int:
    """FLOPs of one forward pass on an input of spatial ``input_shape`` (batch 1)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = int(np.prod(module.kernel_size))
        per = 2 * module.in_channels * module.out_channels // module.groups * k
        if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            total += per * int(np.prod(inputs[0].shape[2:]))
        else:
            total += per * int(np.prod(output.shape[2:]))

    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    with torch.device("meta"):
        meta = UNet(net.config)
    for m in meta.modules():
        if isinstance(m, convs):
            m.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty((1, net.config.in_channels, *input_shape), device="meta"))
    return total


def best_time(fn, repeat=3) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_reference(net: UNet, size: int):
    """GFLOP/s of a bare c->c conv of each level's width at that level's size."""
    g = net.config.geometry
    conv = nn.Conv3d if g.ndim == 3 else nn.Conv2d
    mf = memory_format(g.ndim)
    rows = []
    for level in range(g.levels + 1):
        c = net.config.channels(level)
        n = max(g.kernel_size, size // g.factor**level)
        layer = conv(c, c, g.kernel_size).eval().to(memory_format=mf)
        x = torch.rand(1, c, *(n,) * g.ndim).contiguous(memory_format=mf)
        flops = 2 * c * c * g.kernel_size**g.ndim * (n - g.kernel_size + 1) ** g.ndim
        with torch.inference_mode():
            t = best_time(lambda: layer(x))  # noqa: B023 - called right here
        rows.append((f"torch Conv{g.ndim}d {c}->{c}, {n}^{g.ndim}", flops, t))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 256))
    parser.add_argument("--tiles", type=int, nargs="+", default=(64, 128))
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=3, levels=3), base_channels=args.base))
    g = net.config.geometry
    shape = tuple(args.shape)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    norm = (0.0, 1.0)

    rows = []
    for tile in args.tiles:
        plan = predict_plan(image, net, tile)
        flops = plan.n_tiles * network_flops(net, plan.window_shape)
        emb = predict_embeddings(image, net, tile, device="cpu", normalization=norm)
        t = best_time(lambda: emb.compute(scheduler="sync"), repeat=1)  # noqa: B023 - called right here
        rows.append((f"tiled exact, {plan.n_tiles} tiles of {'x'.join(map(str, plan.tile))}", flops, t))
    whole = g.tile_input_size(g.cover(shape))
    rows.append((f"whole image (input {'x'.join(map(str, whole))})", network_flops(net, whole),
                 best_time(lambda: predict_whole(image, net, device="cpu", normalization=norm), repeat=1)))
    reference = conv_reference(net, max(g.tile_input_size(t) for t in args.tiles))
    peak = max(f / t for _, f, t in reference)

    print(f"# 3D U-Net l=3 base {args.base} ch, image {shape}, {args.threads} threads, "
          f"load avg {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print("| what | GFLOP | time (s) | GFLOP/s | % of best bare conv |")
    print("|---|---|---|---|---|")
    for label, flops, t in rows + reference:
        print(f"| {label} | {flops / 1e9:.1f} | {t:.2f} | {flops / t / 1e9:.1f} | {100 * flops / t / peak:.0f} % |")


if __name__ == "__main__":
    main()
