"""``shiftseg segment`` and ``shiftseg check`` from the command line."""

import subprocess
import sys

import numpy as np
import pytest
import zarr
from helpers import save_standardized  # noqa: E402

from napari_shiftseg.cli import main

tiny_model = save_standardized


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    image = (np.random.default_rng(0).random((36, 44)) > 0.6).astype(np.float32)
    np.save(root / "img.npy", image)
    return {"root": root, "image": root / "img.npy",
            "model": tiny_model(root / "m.safetensors", image),
            "model3d": tiny_model(root / "m3.safetensors", np.zeros((24, 24, 24), np.float32), ndim=3)}


def segment_args(files, out, *extra):
    return ["segment", str(files["image"]), "-m", str(files["model"]), "--tile", "16", "-o", str(out),
            "--device", "cpu", "--bandwidth", "1.0", "--min-size", "3", *extra]


def assert_one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1]
    assert last.startswith("shiftseg ") and "error:" in last
    assert not any("Traceback" in line for line in err)
    for word in words:
        assert word in last


def test_segment_writes_the_three_arrays(files, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(segment_args(files, out)) == 0
    captured = capsys.readouterr()
    assert "objects" in captured.out and "tile" in captured.err  # summary + progress bar
    # stderr is not a terminal here (a log file): the bar must not print a line per tile.
    assert captured.err.count("\r") + captured.err.count("\n") <= 6, captured.err
    group = zarr.open_group(out, mode="r")
    assert group.attrs["complete"] is True
    assert group["embeddings"].shape == (3, 36, 44)
    assert group["foreground"].shape == group["labels/instances/0"].shape == (36, 44)
    assert group["labels/instances/0"][...].max() > 0
    # the same command again resumes a finished output: nothing to do, same result
    before = group["labels/instances/0"][...]
    assert main(segment_args(files, out, "--quiet")) == 0
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["labels/instances/0"][...], before)


def test_other_settings_need_overwrite(files, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(segment_args(files, out, "--quiet")) == 0
    args = segment_args(files, out, "--quiet")
    args[args.index("--tile") + 1] = "8"
    assert main(args) == 2
    assert_one_line_error(capsys, "different tile", "--overwrite")
    assert main(args + ["--overwrite"]) == 0


def test_missing_image(files, tmp_path, capsys):
    args = segment_args(files, tmp_path / "out.zarr")
    args[1] = str(tmp_path / "nope.tif")
    assert main(args) == 2
    assert_one_line_error(capsys, "nope.tif", "does not exist")
    assert not (tmp_path / "out.zarr").exists()


def test_3d_model_on_2d_image(files, tmp_path, capsys):
    args = segment_args(files, tmp_path / "out.zarr")
    args[args.index("-m") + 1] = str(files["model3d"])
    assert main(args) == 2
    assert_one_line_error(capsys, "3D", "2D")
    assert not (tmp_path / "out.zarr").exists()


def test_unreachable_scheduler(files, tmp_path, capsys):
    assert main(segment_args(files, tmp_path / "out.zarr", "--scheduler", "tcp://127.0.0.1:1")) == 2
    assert_one_line_error(capsys, "tcp://127.0.0.1:1")
    assert not (tmp_path / "out.zarr").exists()


def test_bad_arguments_are_usage_errors(files, tmp_path, capsys):
    for bad in (["--tile", "abc"], ["--bandwidth", "-1"], ["--scheduler", "tcp://x:1", "--workers", "2"],
                ["--mode", "fast"]):
        with pytest.raises(SystemExit) as info:
            main(segment_args(files, tmp_path / "out.zarr", *bad))
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        # one line that says what is wrong, not argparse's usage block first
        assert len(err) == 1 and err[0].startswith("shiftseg segment: error:"), err
        assert err[0].endswith("(see shiftseg segment --help)")


def test_real_process_prints_no_traceback(files, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "napari_shiftseg.cli", "segment", str(tmp_path / "missing.npy"),
         "-m", str(files["model"]), "-o", str(tmp_path / "out.zarr")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_check_reports_the_stitching_difference(files, capsys):
    assert main(["check", str(files["image"]), "-m", str(files["model"]), "--tile", "16"]) == 0
    out = capsys.readouterr().out
    assert "max |stitched - whole|" in out and "(exact" in out
    assert main(["check", str(files["image"]), "-m", str(files["model"]), "--tile", "10",
                 "--mode", "naive"]) == 0
    assert "NOT exact" in capsys.readouterr().out


def test_segment_diameter(files, tmp_path, capsys):
    """--diameter resamples the image for a model that records its object size; bad values are
    refused by the parser with a one-line message."""
    from napari_shiftseg.network.modelio import load_model, save_model

    model = load_model(files["model"])
    model.meta["object_diameter"] = 8.0
    sized = save_model(model, tmp_path / "sized.safetensors")
    out = tmp_path / "out.zarr"
    args = segment_args(files, out, "--diameter", "4")
    args[args.index("-m") + 1] = str(sized)
    assert main(args) == 0
    assert "resampled to 72x88" in capsys.readouterr().out
    group = zarr.open_group(out, mode="r")
    assert group["labels/instances/0"].shape == (36, 44) and group["embeddings"].shape[1:] == (72, 88)
    for bad in ("-3", "big", "inf"):
        with pytest.raises(SystemExit) as exit_info:
            main(segment_args(files, tmp_path / "x.zarr", "--diameter", bad))
        assert exit_info.value.code == 2
        assert "diameter" in capsys.readouterr().err


def test_segment_table_and_rgb(files, tmp_path, capsys):
    """--table writes one row per object (voxel size from the file); an RGB file is refused
    with a one-line message unless a channel is chosen."""
    import csv

    import tifffile

    image = np.load(files["image"])
    tifffile.imwrite(tmp_path / "cal.tif", (image * 200).astype(np.uint8), imagej=True,
                     resolution=(2.0, 2.0), metadata={"unit": "um"})
    out, table = tmp_path / "out.zarr", tmp_path / "objects.csv"
    args = segment_args(files, out, "--table", str(table))
    args[1] = str(tmp_path / "cal.tif")
    assert main(args) == 0
    with table.open() as f:
        rows = list(csv.DictReader(f))
    labels = zarr.open_group(out, mode="r")["labels/instances/0"][...]
    assert len(rows) == len(np.unique(labels[labels > 0])) > 0
    first = rows[0]
    voxels = int((labels == int(first["index"])).sum())
    assert int(first["voxels"]) == voxels and float(first["size"]) == pytest.approx(voxels * 0.25)
    assert {"centroid_y", "bbox_x_stop", "mean_intensity", "embedding_mean_0"} <= set(first)

    rgb = np.stack([image] * 3, axis=-1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    args = segment_args(files, tmp_path / "rgb.zarr")
    args[1] = str(tmp_path / "rgb.tif")
    assert main(args) == 2
    assert_one_line_error(capsys, "RGB image", "--channel")
    assert main(args + ["--channel", "0"]) == 0


def test_segment_isotropic_from_the_files_voxel_size(files, tmp_path, capsys):
    import tifffile

    stack = (np.random.default_rng(1).random((5, 20, 24)) * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "aniso.tif", stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    out = tmp_path / "iso.zarr"
    args = ["segment", str(tmp_path / "aniso.tif"), "-m", str(files["model3d"]), "--tile", "16",
            "-o", str(out), "--device", "cpu", "--isotropic"]
    assert main(args) == 0
    group = zarr.open_group(out, mode="r")
    # pixel 0.5 um, z step 1.5 um: three planes per plane
    assert group["embeddings"].shape[1:] == (15, 20, 24) and group["labels/instances/0"].shape == stack.shape
    np.save(tmp_path / "plain.npy", stack)
    args[1], args[7] = str(tmp_path / "plain.npy"), str(tmp_path / "p.zarr")
    assert main(args) == 2
    assert_one_line_error(capsys, "voxel size", "--voxel-size")
    assert main(args + ["--voxel-size", "3,1,1"]) == 0
    assert zarr.open_group(tmp_path / "p.zarr", mode="r")["embeddings"].shape[1:] == (15, 20, 24)


def test_table_never_replaces_a_file_unasked(files, tmp_path, capsys):
    """issue 25: --table on the input image, an existing file or a planted symlink is refused
    before anything runs; --overwrite replaces a plain file (never through a symlink)."""
    import os

    image = tmp_path / "image.npy"
    image.write_bytes(files["image"].read_bytes())
    before = image.read_bytes()
    args = segment_args(files, tmp_path / "o.zarr", "--table", str(image))
    args[1] = str(image)
    assert main(args) == 2 and image.read_bytes() == before
    assert not (tmp_path / "o.zarr").exists()
    assert_one_line_error(capsys, "input of this run")
    assert main(args + ["--overwrite"]) == 2 and image.read_bytes() == before
    assert_one_line_error(capsys, "input of this run")

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "link.csv"
    os.symlink(victim, link)
    assert main(segment_args(files, tmp_path / "p.zarr", "--table", str(link), "--overwrite")) == 2
    assert victim.read_text() == "keep me"
    assert_one_line_error(capsys, "symbolic link")

    old = tmp_path / "old.csv"
    old.write_text("old")
    assert main(segment_args(files, tmp_path / "q.zarr", "--table", str(old))) == 2
    assert old.read_text() == "old"
    assert_one_line_error(capsys, "exists", "--overwrite")
    assert main(segment_args(files, tmp_path / "q.zarr", "--table", str(old), "--overwrite")) == 0
    assert old.read_text().startswith("index,")


@pytest.mark.parametrize("content, word", [
    (b"not json at all \x00\xff", "not a dask scheduler file"),
    (b"[1, 2, 3]", "not a dask scheduler file"),
    (b'{"address": 5}', "not a dask scheduler file"),
    (b'{"address": "nowhere"}', "not a dask scheduler file"),
    (b'{"type": "Scheduler"}', "not a dask scheduler file"),
    (b" " * ((1 << 20) + 1), "bytes: not a dask scheduler file"),
])
def test_a_wrong_scheduler_file_is_one_line(files, tmp_path, capsys, content, word):
    path = tmp_path / "scheduler.json"
    path.write_bytes(content)
    assert main(segment_args(files, tmp_path / "out.zarr", "--scheduler-file", str(path))) == 2
    assert_one_line_error(capsys, word)
    assert not (tmp_path / "out.zarr").exists()


def test_workers_are_bounded_by_the_cpus(files, tmp_path, capsys):
    from napari_shiftseg.util.threads import usable_cpus

    cpus = usable_cpus()
    assert main(segment_args(files, tmp_path / "out.zarr", "--workers", str(cpus + 1))) == 2
    assert_one_line_error(capsys, f"at most {cpus}")
    assert not (tmp_path / "out.zarr").exists()


def test_voxel_size_of_the_wrong_length_is_refused_not_dropped(files, tmp_path, capsys):
    assert main(segment_args(files, tmp_path / "out.zarr", "--voxel-size", "2,1,1")) == 2
    assert_one_line_error(capsys, "3 values", "2D")
    assert main(segment_args(files, tmp_path / "out.zarr", "--voxel-size", "1,1")) == 0


def test_absurd_voxel_sizes_are_refused_before_resampling(files, tmp_path, capsys):
    """--isotropic --voxel-size 1000,0.001,0.001 would make a 16x64x64 stack 10^6 times deeper:
    refused from the planned shape, before anything is allocated."""
    np.save(tmp_path / "stack.npy", np.zeros((16, 64, 64), np.float32))
    args = ["segment", str(tmp_path / "stack.npy"), "-m", str(files["model3d"]), "--tile", "16",
            "-o", str(tmp_path / "s.zarr"), "--device", "cpu", "--isotropic",
            "--voxel-size", "1000,0.001,0.001"]
    assert main(args) == 2
    assert_one_line_error(capsys, "resampling would turn", "voxel size")
    assert not (tmp_path / "s.zarr").exists()


def test_a_min_size_above_the_image_is_refused_not_an_empty_result(files, tmp_path, capsys):
    args = segment_args(files, tmp_path / "out.zarr")
    args[args.index("--min-size") + 1] = str(36 * 44 + 1)
    assert main(args) == 2
    assert_one_line_error(capsys, "larger than the whole image", "--min-size")
    assert not (tmp_path / "out.zarr").exists()


def test_a_large_hostile_scheduler_file_is_refused_within_bounds(tmp_path):
    """10 MB of junk, or of JSON nesting, named as the scheduler file: one line, little memory."""
    from helpers import run_bounded

    junk, nested = tmp_path / "junk.json", tmp_path / "nested.json"
    junk.write_bytes(b"\xff" * 10_000_000)
    nested.write_text("[" * 500_000 + "]" * 500_000)
    code = ("import sys\nfrom napari_shiftseg.util._errors import ShiftSegError\n"
            "from napari_shiftseg.inference.cluster import connect\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        connect(scheduler_file=path)\n"
            "    except ShiftSegError as err:\n        print('refused', err)\n"
            "report_peak()\n")
    result = run_bounded(code, str(junk), str(nested))
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.count("refused") == 2
    assert int(result.stdout.split()[-1]) < 1024
