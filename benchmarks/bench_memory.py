"""Benchmark: peak memory of ``shiftseg segment`` does not grow with the volume.

Writes synthetic images (:func:`napari_shiftseg.synthetic.synth.lazy_random_objects`, chunk by chunk) of
1x, 2x, 4x and 8x the base voxel count to zarr, then runs ``shiftseg segment`` on each in a
fresh process and reads that process's peak resident memory (``ru_maxrss`` from ``wait4``).
Every stage of the job streams tile by tile (prediction -> zarr, mean-shift on a bounded
subsample, labelling staged through zarr), so the peak should stay within +-20 % of 1x.

The model is a small hand-set U-Net that thresholds the image (the point is memory, not
quality), so the labelling stage sees a realistic number of objects.

Run: ``python benchmarks/bench_memory.py [--base 1024 1024] [--scales 1 2 4 8] [--tile 256]``
(2D; ``--base 64 256 256`` for 3D). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_model(path: Path, ndim: int) -> Path:
    """A hand-set U-Net: foreground logit = 20 · (normalised intensity − 0.5), constant embeddings.

    Objects are then the bright blobs of the synthetic image, a realistic object count (a
    random-weight net instead fragments the foreground into ~1 object per 50 voxels). All
    weights of the valid U-Net still run, so the compute and memory pattern is the real one.
    """
    import torch

    from napari_shiftseg.network.geometry import UNetGeometry
    from napari_shiftseg.network.modelio import save_model
    from napari_shiftseg.network.unet import UNet, UNetConfig

    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=ndim, levels=2), base_channels=4, embed_dim=2))
    with torch.no_grad():
        for param in net.parameters():
            param.zero_()
        # channel 0 carries the input through the top level's convs and skip connection
        for block in (net.down[0], net.up[0]):
            for layer in block:
                if isinstance(layer, torch.nn.modules.conv._ConvNd):
                    layer.weight[(0, 0) + (1,) * ndim] = 1.0
        net.head.weight[(-1, 0) + (0,) * ndim] = 20.0
        net.head.bias[:] = torch.tensor([1.0, -1.0, -10.0])
    return save_model(net.eval(), path)


def scaled_shape(base, scale: int) -> tuple[int, ...]:
    """``base`` grown by ``scale`` in voxels, spread over the axes (largest axes first)."""
    shape = list(base)
    factors = []
    n = scale
    while n > 1:  # powers of two: double one axis at a time, round-robin from the last
        factors.append(2)
        n //= 2
    for i, f in enumerate(factors):
        shape[len(shape) - 1 - (i % len(shape))] *= f
    if math.prod(shape) != scale * math.prod(base):
        raise SystemExit(f"scale {scale} must be a power of two")
    return tuple(shape)


def write_image(path: Path, shape, chunk: int) -> None:
    import dask.array as da
    import zarr

    from napari_shiftseg.synthetic.synth import lazy_random_objects

    image, _ = lazy_random_objects(shape, chunks=chunk, radius=5, density=0.15, noise_std=0.05)
    out = zarr.create_array(path, shape=shape, chunks=(chunk,) * len(shape), dtype="float32",
                            overwrite=True)
    da.store(image, out, lock=False)


def peak_rss(command) -> tuple[int, float, int]:
    """(peak RSS in bytes, wall seconds, exit status) of ``command`` run in a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode:
        sys.stderr.write(process.stderr.read().decode())
    process.stderr.close()
    return usage.ru_maxrss * 1024, wall, process.returncode  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, nargs="+", default=[1024, 1024], help="1x shape")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tile", type=int, default=256, help="output tile (and zarr chunk)")
    parser.add_argument("--workdir", default=None, help="where to write the volumes (default: temp)")
    args = parser.parse_args(argv)

    ndim = len(args.base)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model.safetensors", ndim)
        rows = []
        for scale in args.scales:
            shape = scaled_shape(args.base, scale)
            image = tmp / f"image_{scale}x.zarr"
            write_image(image, shape, chunk=min(args.tile, *shape))
            command = [sys.executable, "-m", "napari_shiftseg.cli", "segment", str(image),
                       "-m", str(model), "-o", str(tmp / f"out_{scale}x.zarr"), "--tile",
                       str(args.tile), "--device", "cpu", "--bandwidth", "1.0", "--min-size", "5",
                       "--quiet"]
            rss, wall, code = peak_rss(command)
            if code:
                print(f"shiftseg segment failed on {shape} (exit {code})", file=sys.stderr)
                return code
            import zarr

            objects = dict(zarr.open_group(tmp / f"out_{scale}x.zarr", mode="r").attrs["shiftseg"])["n_objects"]
            rows.append((scale, shape, rss, wall, objects))
            print(f"  {scale}x {shape}: {rss / 2**20:.0f} MiB in {wall:.1f} s", file=sys.stderr)

    base_rss = rows[0][2]
    print("| volume | shape | voxels | embeddings on disk | objects | peak RSS | vs 1x | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for scale, shape, rss, wall, objects in rows:
        voxels = math.prod(shape)
        emb_mib = voxels * 3 * 4 / 2**20
        print(f"| {scale}x | {'x'.join(map(str, shape))} | {voxels / 1e6:.1f} M | {emb_mib:.0f} MiB "
              f"| {objects} | {rss / 2**20:.0f} MiB | {100 * (rss / base_rss - 1):+.1f} % | {wall:.1f} s |")
    worst = max(abs(r[2] / base_rss - 1) for r in rows)
    print(f"\nlargest deviation from 1x: {100 * worst:.1f} % (target: within 20 %)")
    return 0 if worst <= 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
