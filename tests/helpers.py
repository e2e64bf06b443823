"""Tiny random models shared by the tests (imported as ``helpers``; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import save_model
from napari_shiftseg.network.unet import UNet, UNetConfig

NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}


def tiny_net(ndim=2, levels=2, base=2, padding="valid", seed=0) -> UNet:
    """Random He-initialised net: torch's default init makes an untrained net almost constant,
    which would hide the seams of naive tiling."""
    torch.manual_seed(seed)
    geometry = UNetGeometry(ndim=ndim, levels=levels, padding=padding)
    net = UNet(UNetConfig(geometry=geometry, base_channels=base)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d,
                              torch.nn.ConvTranspose3d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.zeros_(m.bias)
    return net


def save_tiny(path, **kwargs):
    """Save :func:`tiny_net` (same keyword arguments) as a model file and return its path."""
    return save_model(tiny_net(**kwargs), path, meta={"normalization": NORMALIZATION})


def save_standardized(path, image, ndim=2, seed=0):
    """Random 2-level U-Net whose head is rescaled so outputs have mean 0, std 1 on ``image``
    (random weights alone give nearly constant outputs and no foreground)."""
    from napari_shiftseg.inference.predict import predict_whole

    torch.manual_seed(seed)
    config = UNetConfig(geometry=UNetGeometry(ndim=ndim, levels=2), base_channels=4, embed_dim=2)
    net = UNet(config).eval()
    out = predict_whole(image, net, device="cpu").reshape(config.out_channels, -1)
    mean, std = torch.from_numpy(out.mean(1)), torch.from_numpy(out.std(1))
    with torch.no_grad():
        net.head.weight /= std.view(-1, *[1] * (net.head.weight.ndim - 1))
        net.head.bias.sub_(mean).div_(std)
    return save_model(net, path)


# A hostile input must be refused within bounds: at most MEMORY_BOUND bytes of data segment
# and CPU_BOUND CPU seconds (CPU, not wall time: the suite must hold on a loaded machine). The
# wall-clock timeout only catches a hang (a blocked open of a FIFO uses no CPU); it is far
# above any honest run.
MEMORY_BOUND = 1 << 30
CPU_BOUND = 30
HANG_TIMEOUT = 600


def _limits():  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BOUND, MEMORY_BOUND))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_BOUND, CPU_BOUND))


# The child's own peak RSS in MiB. Not getrusage's ru_maxrss: Linux keeps it across execve, so
# a child of a big pytest process would report the parent's peak (1.8 GB in the full suite).
# VmHWM belongs to the new address space that execve made.
_PEAK_PRELUDE = """
def peak_mib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
def report_peak():
    print(peak_mib())
"""


def run_bounded(code: str, *args: str):
    """Run ``python -c code args...`` in a fresh process under the memory and CPU bounds above.

    The child prints its own peak RSS in MiB as the last line of stdout when ``code`` ends with
    ``report_peak()`` (defined for it). Returns the CompletedProcess: a child that needs more
    memory fails with MemoryError, one that needs more CPU is killed by SIGXCPU (rc -24)."""
    import subprocess
    import sys

    prelude = _PEAK_PRELUDE
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True,
                          text=True, preexec_fn=_limits, timeout=HANG_TIMEOUT)


#: A ``shiftseg segment`` output in the layout written before issue 26 (the embeddings as the
#: NGFF image, the input named by its path only), with its input: see its README.md.
OLDER_OUTPUT = Path(__file__).parent / "data" / "old_layout_output"


def older_output(folder) -> Path:
    """A copy of :data:`OLDER_OUTPUT` in ``folder`` (``cells.zarr``, 2D 32 x 32, voxel 0.25 um,
    18 objects) whose recorded input is the copy of its ``cells.tif`` beside it."""
    import json
    import shutil

    folder = Path(folder)
    shutil.copy(OLDER_OUTPUT / "cells.tif", folder / "cells.tif")
    out = shutil.copytree(OLDER_OUTPUT / "cells.zarr", folder / "cells.zarr")
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["shiftseg"]["input"]["path"] = str((folder / "cells.tif").resolve())
    (out / "zarr.json").write_text(json.dumps(meta))
    return out
