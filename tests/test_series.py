"""``shiftseg segment`` on a time series: every time point on its own, ids numbered on across
time, one OME-Zarr output with a time axis; resumable, and readable by the napari reader."""

import shutil
import threading

import numpy as np
import pytest
import tifffile
import zarr
from helpers import save_standardized

from napari_shiftseg.cli import main
from napari_shiftseg.files import io
from napari_shiftseg.files.ngff import IMAGE, LABELS
from napari_shiftseg.inference.segment import segment_to_zarr
from napari_shiftseg.inference.series import frames_path, segment_series
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.util.progress import Cancelled

T = 3
RUN = {"tile": 16, "device": "cpu", "bandwidth": 1.0, "min_size": 3, "diameter": None}


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A T=3 2D+time ImageJ hyperstack (TYX, 0.5 µm pixels) and a tiny 2D model for it."""
    root = tmp_path_factory.mktemp("series")
    frames = (np.random.default_rng(0).random((T, 36, 44)) > 0.6).astype(np.float32)
    path = root / "movie.tif"
    tifffile.imwrite(path, frames, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TYX", "unit": "um"})
    return {"root": root, "path": path, "frames": frames,
            "model": save_standardized(root / "m.safetensors", frames[0])}


@pytest.fixture(scope="module")
def reference(movie):
    """Each time point segmented alone by segment_to_zarr, and the series run once."""
    root = movie["root"]
    alone = [segment_to_zarr(movie["frames"][t], root / f"alone{t}.zarr", movie["model"],
                             voxel_size=(0.5, 0.5), **RUN)[LABELS][...] for t in range(T)]
    group = segment_series(movie["path"], root / "series.zarr", movie["model"], **RUN)
    return {"alone": alone, "group": group, "labels": group[LABELS][...], "path": root / "series.zarr"}


def test_labels_have_time_first_and_ids_numbered_on(movie, reference):
    group, labels = reference["group"], reference["labels"]
    assert labels.shape == (T, 36, 44) and labels.dtype == np.int32
    record = dict(group.attrs["shiftseg"])
    assert group.attrs["complete"] is True and record["time_points"] == T
    assert all(n > 0 for n in record["objects"]) and record["n_objects"] == sum(record["objects"])
    for t in range(1, T):
        assert labels[t][labels[t] > 0].min() > labels[t - 1].max()  # numbered on
    assert labels.max() == record["n_objects"]
    # each time point is what segment_to_zarr gives on it alone, up to the offset
    for t, alone in enumerate(reference["alone"]):
        offset = record["first_ids"][t] - 1
        np.testing.assert_array_equal(labels[t], np.where(alone > 0, alone + offset, 0))
        assert record["objects"][t] == alone.max()
    # the input is the NGFF image, placed with the file's pixel size
    np.testing.assert_array_equal(group[IMAGE][...], movie["frames"])
    assert record["voxel_size"] == [0.5, 0.5]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_output_validates_as_ome_zarr_with_a_time_axis(movie, reference, tmp_path, version):
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
        from ome_zarr_models.v05.image_label import ImageLabel
        group = reference["group"]
    else:
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel
        group = segment_series(movie["path"], tmp_path / "v04.zarr", movie["model"], ngff="0.4", **RUN)
        np.testing.assert_array_equal(group[LABELS][...], reference["labels"])
    image = Image.from_zarr(group)  # raises on any violation of the spec
    label = ImageLabel.from_zarr(group["labels/instances"])
    image_ms = (image.ome_attributes if version == "0.5" else image.attributes).multiscales[0]
    label_ms = (label.ome_attributes if version == "0.5" else label.attributes).multiscales[0]
    assert [a.name for a in image_ms.axes] == [a.name for a in label_ms.axes] == ["t", "y", "x"]
    assert image_ms.axes[0].type == "time"
    assert list(label_ms.datasets[0].coordinateTransformations[0].scale) == [1.0, 0.5, 0.5]


def test_cancel_after_the_first_time_point_resumes_without_redoing_it(movie, reference, tmp_path):
    out = tmp_path / "out.zarr"
    cancel, told = threading.Event(), []

    def first_only(point):
        told.append(point)
        cancel.set()  # stop once the first time point is finished

    with pytest.raises(Cancelled):
        segment_series(movie["path"], out, movie["model"], cancel=cancel, time_point=first_only, **RUN)
    assert [p.index for p in told] == [0] and not out.exists()  # never a partial output
    frames = frames_path(out)
    assert zarr.open_group(frames / "t0000.zarr", mode="r").attrs["complete"] is True
    assert not (frames / "t0001.zarr").exists()

    cancel, points = threading.Event(), []

    def stop_assembling(text):
        if text == "assembling":
            cancel.set()

    with pytest.raises(Cancelled):  # every time point finished, then stopped while assembling
        segment_series(movie["path"], out, movie["model"], cancel=cancel, stage=stop_assembling,
                       time_point=points.append, **RUN)
    assert [p.reused for p in points] == [True, False, False] and not out.exists()
    assert (tmp_path / ".out.zarr.new").exists()  # the unfinished assembly, ours to remove

    stages, points = [], []
    group = segment_series(movie["path"], out, movie["model"], stage=stages.append,
                           time_point=points.append, **RUN)
    assert [p.reused for p in points] == [True, True, True]
    assert not (tmp_path / ".out.zarr.new").exists()
    assert stages == ["assembling"]  # no tiles, no clustering
    np.testing.assert_array_equal(group[LABELS][...], reference["labels"])

    # the same call again: nothing to compute, nothing to assemble
    stages.clear()
    points.clear()
    segment_series(movie["path"], out, movie["model"], stage=stages.append, time_point=points.append, **RUN)
    assert all(p.reused for p in points) and stages == []


def test_other_clustering_relabels_other_embeddings_need_overwrite(movie, reference, tmp_path):
    out = tmp_path / "out.zarr"
    segment_series(movie["path"], out, movie["model"], **RUN)
    points = []
    group = segment_series(movie["path"], out, movie["model"], time_point=points.append,
                           **{**RUN, "min_size": 6})
    assert not any(p.reused for p in points)  # labelled again from the stored embeddings
    assert dict(group.attrs["shiftseg"])["n_objects"] <= dict(reference["group"].attrs["shiftseg"])["n_objects"]
    with pytest.raises(ShiftSegError, match="time point 1/3: .*different tile.*--overwrite"):
        segment_series(movie["path"], out, movie["model"], **{**RUN, "tile": 8})
    assert zarr.open_group(out, mode="r").attrs["complete"] is True  # the output is untouched
    group = segment_series(movie["path"], out, movie["model"], overwrite=True, **{**RUN, "tile": 8})
    assert group[LABELS].shape == (T, 36, 44) and group.attrs["complete"] is True
    before = group[LABELS][...]
    # the work folder deleted to free space: the finished output is returned as it is
    shutil.rmtree(frames_path(out))
    again = segment_series(movie["path"], out, movie["model"], **RUN)
    np.testing.assert_array_equal(again[LABELS][...], before)
    assert not frames_path(out).exists()


def test_folders_that_are_not_ours_are_refused_and_kept(movie, tmp_path):
    out = tmp_path / "out.zarr"
    foreign = frames_path(out)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ShiftSegError, match="not made by shiftseg"):
        segment_series(movie["path"], out, movie["model"], **RUN)
    assert (foreign / "notes.txt").read_text() == "mine" and not out.exists()

    single = tmp_path / "single.zarr"
    segment_to_zarr(movie["frames"][0], single, movie["model"], **RUN)
    with pytest.raises(ShiftSegError, match="single-image shiftseg segmentation.*--overwrite"):
        segment_series(movie["path"], single, movie["model"], **RUN)
    replaced = segment_series(movie["path"], single, movie["model"], overwrite=True, **RUN)
    assert replaced[LABELS].shape == (T, 36, 44) and "embeddings" not in replaced
    user = tmp_path / "user.zarr"
    zarr.open_group(user, mode="w").attrs["mine"] = True
    with pytest.raises(ShiftSegError, match="not a shiftseg time-series"):
        segment_series(movie["path"], user, movie["model"], **RUN)
    assert zarr.open_group(user, mode="r").attrs["mine"] is True


def test_read_series_is_lazy_and_read_spatial_points_at_it(movie):
    series = io.read_series(movie["path"])
    assert len(series) == T and series.shape == (T, 36, 44) and series.axes == "TYX"
    assert series.voxel_size == (0.5, 0.5) and series.unit == "um"
    assert isinstance(series.frame(1), np.memmap)  # nothing read yet
    np.testing.assert_array_equal(series.frame(1), movie["frames"][1])
    assert io.time_points(movie["path"]) == T
    with pytest.raises(ShiftSegError, match="is a time series.*shiftseg segment.*read_series"):
        io.read_spatial(movie["path"])


def test_time_first_is_found_wherever_the_file_puts_it(tmp_path):
    stack = np.arange(2 * T * 8 * 10, dtype=np.uint16).reshape(2, T, 8, 10)  # C, T, Y, X in memory
    path = tmp_path / "tc.tif"
    tifffile.imwrite(path, np.moveaxis(stack, 0, 1), imagej=True, metadata={"axes": "TCYX"})
    series = io.read_series(path, channel=1)
    assert series.shape == (T, 8, 10)
    np.testing.assert_array_equal(series.frame(2), stack[1, 2])
    both = io.read_series(path, channel=[1, 0])
    assert both.shape == (T, 2, 8, 10) and both.axes == "TCYX"
    np.testing.assert_array_equal(np.asarray(both.frame(0)), stack[[1, 0], 0])
    tifffile.imwrite(tmp_path / "plain.tif", stack[0, 0])
    assert io.time_points(tmp_path / "plain.tif") == 1
    with pytest.raises(ShiftSegError, match="no time axis"):
        io.read_series(tmp_path / "plain.tif")


def test_napari_reader_opens_it_with_the_time_axis(reference):
    from napari_shiftseg._reader import get_segmentation_reader

    out = reference["path"]
    reader = get_segmentation_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    kinds = {kind: (data, meta) for data, meta, kind in layers}
    labels, meta = kinds["labels"]
    assert labels.shape == (T, 36, 44) and meta["scale"] == (1.0, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(labels), reference["labels"])
    assert kinds["image"][0].shape == (T, 36, 44)


def test_cli_segments_a_tzyx_hyperstack(tmp_path, capsys):
    frames = (np.random.default_rng(1).random((T, 8, 16, 16)) > 0.6).astype(np.float32)
    path = tmp_path / "movie3d.tif"
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TZYX", "spacing": 1.0})
    model = save_standardized(tmp_path / "m3.safetensors", frames[0], ndim=3)
    out = tmp_path / "out.zarr"
    args = ["segment", str(path), "-m", str(model), "--tile", "8", "-o", str(out), "--device", "cpu",
            "--bandwidth", "1.0", "--min-size", "3", "--diameter", "none", "--quiet"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    group = zarr.open_group(out, mode="r")
    record = dict(group.attrs["shiftseg"])
    assert [line.split(":")[0] for line in lines[:T]] == [f"time point {t}/{T}" for t in range(1, T + 1)]
    assert f"{record['n_objects']} objects over {T} time points" in lines[T]
    labels = group[LABELS][...]
    assert labels.shape == (T, 8, 16, 16) and record["n_objects"] > 0
    for t in range(T):  # each time point as `shiftseg segment` gives it alone, numbered on
        alone = segment_to_zarr(frames[t], tmp_path / f"alone{t}.zarr", model, tile=8, device="cpu",
                                bandwidth=1.0, min_size=3, diameter=None, voxel_size=(1.0, 1.0, 1.0))
        alone = alone[LABELS][...]
        offset = record["first_ids"][t] - 1
        np.testing.assert_array_equal(labels[t], np.where(alone > 0, alone + offset, 0))
    # again: every time point finished earlier, same total
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == T
    assert main(args + ["--table", str(tmp_path / "t.csv")]) == 2
    assert "time series: --table" in capsys.readouterr().err
