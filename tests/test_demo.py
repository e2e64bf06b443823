"""``shiftseg demo`` end to end on a tiny volume and a tiny random 3D model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from helpers import save_tiny  # noqa: E402

from napari_shiftseg.cli import main
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.reproduce.demo import demo_tiles, run_demo
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)




@pytest.fixture(scope="module")
def tiny_3d(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "tiny3d.safetensors", ndim=3, levels=2)


def test_demo_tiles_are_exact_and_off_grid():
    g = UNetGeometry(ndim=3, levels=3)
    assert demo_tiles(g) == ((32, 64, 64), (28, 60, 60))
    exact, naive = demo_tiles(UNetGeometry(ndim=3, levels=2), (30, 60, 60))
    assert all(t % 4 == 0 for t in exact) and all(t % 4 for t in naive)


def test_demo_end_to_end(tmp_path, tiny_3d, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--model", str(tiny_3d), "--shape", "12,32,32", "--tile", "8,16,16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "# shiftseg demo report" in printed and "| exact |" in printed
    report = json.loads((out / "report.json").read_text())
    exact, naive = report["modes"]["exact"], report["modes"]["naive"]
    assert exact["tile"] == [8, 16, 16] and naive["tile"] == [6, 14, 14]
    assert exact["max_abs_diff"] <= 1e-4 < naive["max_abs_diff"]
    for key in ("ap50", "false_splits", "false_merges", "n_pred", "seconds"):
        assert key in exact and key in naive
    text = (out / "REPORT.md").read_text()
    assert text.startswith("# shiftseg demo report")
    # Exact tiling's errors are explained as the model's own, and tiling's share is the difference.
    assert f"Exact tiling's {exact['false_splits']} false splits" in text
    assert f"{naive['false_splits'] - exact['false_splits']:+d} false splits" in text
    for name in ("demo_slices.png", "demo_seams.png"):
        assert (out / name).stat().st_size > 5000
    for mode in ("exact", "naive"):
        group = zarr.open_group(str(out / f"{mode}.zarr"), mode="r")
        assert group.attrs["complete"] is True
        assert group["labels/instances/0"].shape == (12, 32, 32)
        assert group["embeddings"].shape[1:] == (12, 32, 32)
    sample = zarr.open_group(str(out / "sample.zarr"), mode="r")
    assert sample["image"].shape == sample["labels"].shape == (12, 32, 32)
    assert int(np.asarray(sample["labels"][...]).max()) == report["n_gt"]


def test_demo_runs_twice_into_the_same_folder(tmp_path, tiny_3d):
    for _ in range(2):
        report = run_demo(tmp_path, model=tiny_3d, shape=(8, 16, 16), tile=(8, 8, 8), figures=False)
    assert report["modes"]["exact"]["max_abs_diff"] <= 1e-4


def test_demo_refuses_a_2d_model_and_bad_shapes(tmp_path):
    two_d = save_tiny(tmp_path / "two.safetensors", ndim=2, levels=2)
    with pytest.raises(ShiftSegError, match="3D model"):
        run_demo(tmp_path / "x", model=two_d)
    assert main(["demo", "-o", str(tmp_path / "y"), "--shape", "16,48"]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "file"), "--model", str(two_d)]) == 2
    assert main(["demo", "-o", str(tmp_path / "z"), "--model", str(tmp_path / "missing.safetensors")]) == 2
