"""Profile: where a valid-convolution U-Net tile loses to a same-padded one per FLOP (issue 12).

One forward pass of the 3D l = 3 U-Net of ``bench_monai.py`` (4 base channels) on one tile:
valid convolutions on the 220³ window of a 128³ output tile, against the same-padded twin on a
128³ window (what MONAI's sliding window runs). torch.profiler's table per operator (self CPU
time), then the convolution throughput of each in GFLOP/s.

Run: ``python benchmarks/profile_unet.py [--tile 128] [--threads 2] [--rows 12]``
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig


def conv_gflop(net, x) -> float:
    """GFLOP of the convolutions of one forward pass (2 · MACs), counted with hooks."""
    total = [0.0]

    def hook(module, inputs, output):
        k = module.weight.shape  # (out, in/groups, *kernel)
        total[0] += 2.0 * output.numel() * k[1] * float(torch.tensor(k[2:]).prod())

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return total[0] / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for padding in ("valid", "same"):
        geometry = UNetGeometry(ndim=3, levels=3, padding=padding)
        net = UNet(UNetConfig(geometry=geometry, base_channels=4)).eval()
        size = geometry.tile_input_size(args.tile) if padding == "valid" else args.tile
        x = torch.randn(1, 1, size, size, size)
        gflop = conv_gflop(net, x)
        with torch.no_grad():
            net(x)  # warm-up: oneDNN picks its kernels
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                net(x)
        best = min(times)
        results[padding] = (size, gflop, best)
        print(f"\n== {padding}: input {size}³ -> output {args.tile}³, {gflop:.1f} GFLOP in convolutions, "
              f"best of {args.repeats}: {best:.2f} s = {gflop / best:.1f} GFLOP/s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    (_, vg, vt), (_, sg, st) = results["valid"], results["same"]
    print(f"per output tile: valid {vt:.2f} s vs same {st:.2f} s ({vt / st:.2f}x); "
          f"GFLOP {vg:.0f} vs {sg:.0f} ({vg / sg:.2f}x); GFLOP/s {vg / vt:.1f} vs {sg / st:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
