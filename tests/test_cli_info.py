import subprocess
import sys

import torch

from napari_shiftseg.cli import main
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import save_model
from napari_shiftseg.network.unet import UNet, UNetConfig


def test_info_prints_geometry(tmp_path, capsys):
    torch.manual_seed(0)
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=3, levels=2), base_channels=2))
    path = save_model(net, tmp_path / "m.safetensors", meta={"training_window": [12, 12, 12]})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split()[-1] for line in out.splitlines()}
    assert rows["context"] == "40" and rows["capacity f^(d*l)"] == "64" and rows["f^l"] == "4"
    assert "training window" in out


def test_info_on_bad_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junk")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pickle" in err and "Traceback" not in err


def test_console_script_help_is_fast_and_headless():
    # `shiftseg --help` must not import torch, napari or Qt
    code = ("import sys; from napari_shiftseg.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'napari', 'PyQt6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_info_on_an_image_says_it_is_an_image(tmp_path, capsys):
    import numpy as np
    import tifffile

    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint8))
    assert main(["info", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TIFF image, not a model file" in err and "shiftseg segment" in err
    assert "corrupt" not in err
