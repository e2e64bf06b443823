"""Profile: where a valid-convolution U-Net tile loses to a same-padded one per FLOP (issue 12).

One forward pass of the 3D l = 3 U-Net of ``bench_monai.py`` (4 base channels) on one tile:
valid convolutions on the 220³ window of a 128³ output tile, against the same-padded twin on a
128³ window (what MONAI's sliding window runs). torch.profiler's table per operator (self CPU
time), then the convolution throughput of each in GFLOP/s.

Run: ``python benchmarks/profile_unet.py [--tile 128] [--threads 2] [--rows 12]``

``--vs-whole Z Y X`` (issue 27, "tiles under load"): where exact tiles lose to whole-image
inference per FLOP. The same valid U-Net (``--levels``, ``--base``) on the whole image's input
window and on one tile's window, batches of ``--batches`` tiles per call; self CPU time per
operator group (oneDNN convolutions, torch's im2col fallback ``slow_conv3d_forward`` /
``slow_conv_transpose3d``, layout copies, pooling, ReLU, concatenation, the rest), each in ms
per whole-image-equivalent of FLOPs (tile time x whole FLOPs / tile FLOPs), so a column that is
larger for the tile than for the whole image is the tile's excess.

    python benchmarks/profile_unet.py --vs-whole 128 128 256 --tile 64 --batches 1 2 4
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


#: operator groups of the --vs-whole table (aten names, self CPU time)
GROUPS = (
    ("oneDNN conv", ("aten::mkldnn_convolution",)),
    ("im2col conv", ("aten::slow_conv3d_forward", "aten::slow_conv_transpose3d",
                     "aten::slow_conv2d_forward", "aten::slow_conv_transpose2d")),
    ("copies", ("aten::copy_", "aten::contiguous", "aten::clone", "aten::fill_", "aten::zero_")),
    ("pool", ("aten::max_pool3d_with_indices", "aten::max_pool2d_with_indices", "aten::max_pool3d",
              "aten::max_pool2d")),
    ("relu", ("aten::clamp_min_", "aten::relu_", "aten::clamp_min")),
    ("cat", ("aten::cat",)),
)


def _grouped(prof, calls: int) -> dict[str, float]:
    """Self CPU seconds per operator group, per call."""
    out = {name: 0.0 for name, _ in GROUPS} | {"other": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / calls
        group = next((name for name, ops in GROUPS if event.key in ops), "other")
        out[group] += seconds
    return out


def vs_whole(args) -> int:
    """Tile vs whole image per FLOP, by operator group (see the module docstring)."""
    from napari_shiftseg.network.unet import memory_format

    geometry = UNetGeometry(ndim=3, levels=args.levels)
    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=geometry, base_channels=args.base)).eval()
    net.to(memory_format=memory_format(3))
    whole = geometry.tile_input_size(geometry.cover(tuple(args.vs_whole)))
    window = geometry.tile_input_size((args.tile,) * 3)
    runs = [("whole", whole, 1)] + [(f"tile b={b}", window, b) for b in args.batches]
    rows = {}
    for _ in range(args.repeats):  # interleaved rounds; each keeps its fastest
        for name, size, batch in runs:
            x = torch.randn(batch, 1, *size).contiguous(memory_format=memory_format(3))
            gflop = conv_gflop(net, x) / batch  # per tile (or whole image)
            with torch.inference_mode():
                net(x)
                start = time.perf_counter()
                net(x)
                wall = (time.perf_counter() - start) / batch
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    net(x)
            groups = {k: v / batch for k, v in _grouped(prof, 1).items()}
            if name not in rows or wall < rows[name][1]:
                rows[name] = (gflop, wall, groups)
    g_whole = rows["whole"][0]
    print(f"# 3D U-Net l={args.levels}, base {args.base}: whole image {tuple(args.vs_whole)} -> input "
          f"{whole}, {g_whole:.1f} GFLOP; tile {args.tile}³ -> input {window}, {rows[runs[1][0]][0]:.2f} "
          f"GFLOP; {args.threads} threads, best of {args.repeats}; seconds per whole-image FLOPs "
          "(self CPU time, profiled run)")
    names = [n for n, _ in GROUPS] + ["other"]
    print("| run | wall s | / whole | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for name, _, _ in runs:
        gflop, wall, groups = rows[name]
        scale = g_whole / gflop
        print(f"| {name} | {wall * scale:.2f} | {wall * scale / rows['whole'][1]:.2f} | "
              + " | ".join(f"{groups[n] * scale:.2f}" for n in names) + " |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vs-whole", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="compare one tile with this whole image, per FLOP (see above)")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--base", type=int, default=4)
    p.add_argument("--batches", type=int, nargs="+", default=(1, 2, 4))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.vs_whole:
        return vs_whole(args)
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
