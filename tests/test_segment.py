"""The resumable zarr segmentation job: layout, exactness, resume, refusal of other arguments."""

import threading
import time

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import save_standardized  # noqa: E402

from napari_shiftseg.inference import segment as segment_module
from napari_shiftseg.inference.instances import Clustering, label_instances
from napari_shiftseg.inference.predict import predict_whole
from napari_shiftseg.inference.segment import ATTRS, recluster, segment_to_zarr
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import load_model, save_model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.util.progress import Cancelled

SHAPE = (40, 56)
TILE = 16  # f^l = 4 for the 2-level test net: a 3 x 4 tile grid
KW = dict(tile=TILE, device="cpu", bandwidth=1.0, min_size=3, n_seeds=100)


tiny_model = save_standardized


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    yy, xx = np.indices(SHAPE)
    img = np.zeros(SHAPE, np.float32)
    for cy, cx in rng.integers(4, (SHAPE[0] - 4, SHAPE[1] - 4), (12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1.0
    return img + rng.normal(0, 0.05, SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, image):
    return tiny_model(tmp_path_factory.mktemp("model") / "m.safetensors", image)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image, model_path):
    """An uninterrupted run, to compare every other run with."""
    group = segment_to_zarr(image, tmp_path_factory.mktemp("ref") / "ref.zarr", model_path, **KW)
    return {name: group[name][...] for name in ("embeddings", "foreground", "labels/instances/0")}


def assert_same_output(group, reference):
    for name, expected in reference.items():
        np.testing.assert_array_equal(group[name][...], expected, err_msg=name)


def count_tiles(monkeypatch):
    """Count tile writes (each tile computed once per write)."""
    written = []
    original = segment_module._write_tile

    def counting(*args):
        written.append(args[-1])
        return original(*args)

    monkeypatch.setattr(segment_module, "_write_tile", counting)
    return written


def test_layout_and_values(tmp_path, image, model_path, reference):
    group = segment_to_zarr(image, tmp_path / "out.zarr", model_path, **KW)
    assert group.attrs["complete"] is True
    emb, fg, labels = group["embeddings"], group["foreground"], group["labels/instances/0"]
    assert emb.shape == (3, *SHAPE) and emb.chunks == (3, TILE, TILE) and emb.dtype == np.float32
    assert fg.shape == labels.shape == SHAPE and labels.chunks == (TILE, TILE)
    assert labels.dtype == np.int32 and group["done"][...].all()
    assert_same_output(group, reference)
    # tiles are exact: the stored embeddings equal one whole-image pass (up to float rounding)
    whole = predict_whole(image, load_model(model_path), device="cpu")
    np.testing.assert_allclose(emb[...], whole, atol=1e-4)
    np.testing.assert_allclose(fg[...], 1 / (1 + np.exp(-emb[-1].astype(np.float64))), rtol=1e-6)
    # labels are the in-memory pipeline's labels for the stored clustering
    info = dict(group.attrs[ATTRS])
    clustering = Clustering.from_dict(info["clustering"])
    expected = label_instances(da.from_zarr(emb), clustering, min_size=3).compute()
    np.testing.assert_array_equal(labels[...], expected)
    assert info["n_objects"] == labels[...].max() > 0


def test_cancel_then_resume_is_identical_and_skips_done_tiles(tmp_path, image, model_path,
                                                             reference, monkeypatch):
    monkeypatch.setattr(segment_module, "_TILE_BATCH", 5)  # several scheduler calls per run
    out = tmp_path / "out.zarr"
    cancel = threading.Event()

    def stop_after_four(done, total):
        if done >= 4:
            cancel.set()

    with pytest.raises(Cancelled):
        segment_to_zarr(image, out, model_path, progress=stop_after_four, cancel=cancel, **KW)
    group = zarr.open_group(out, mode="r")
    assert "complete" not in group.attrs
    done_before = int(group["done"][...].sum())
    assert 0 < done_before < 12
    written = count_tiles(monkeypatch)
    seen = []
    group = segment_to_zarr(image, out, model_path, progress=lambda d, t: seen.append((d, t)), **KW)
    assert len(written) == 12 - done_before
    assert seen[0] == (done_before, 12) and seen[-1] == (12, 12)
    assert group.attrs["complete"] is True
    assert_same_output(group, reference)


def test_crash_in_a_tile_then_resume(tmp_path, image, model_path, reference, monkeypatch):
    out = tmp_path / "out.zarr"
    original = segment_module._write_tile
    calls = []

    def crash_on_fifth(*args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("worker killed")
        return original(*args)

    monkeypatch.setattr(segment_module, "_write_tile", crash_on_fifth)
    with pytest.raises(RuntimeError, match="worker killed"):
        segment_to_zarr(image, out, model_path, **KW)
    assert "complete" not in zarr.open_group(out, mode="r").attrs
    monkeypatch.setattr(segment_module, "_write_tile", original)
    assert_same_output(segment_to_zarr(image, out, model_path, **KW), reference)


def test_half_written_tile_is_recomputed(tmp_path, image, model_path, reference, monkeypatch):
    out = tmp_path / "out.zarr"
    original = segment_module._write_tile

    def die_after_writing_chunks(block, embeddings, foreground, done, region, index):
        if index == (1, 2):
            # the chunks land, then the process dies before the done flag; another tile is
            # finished first (a run that dies before its first tile leaves nothing to resume)
            embeddings[(slice(None),) + region] = np.full_like(block, 7.0)
            for _ in range(200):
                if np.asarray(done[...]).any():
                    break
                time.sleep(0.05)
            raise KeyboardInterrupt
        return original(block, embeddings, foreground, done, region, index)

    monkeypatch.setattr(segment_module, "_write_tile", die_after_writing_chunks)
    with pytest.raises(KeyboardInterrupt):
        segment_to_zarr(image, out, model_path, **KW)
    group = zarr.open_group(out, mode="r")
    assert not group["done"][1, 2] and (group["embeddings"][:, 16:32, 32:48] == 7.0).all()
    monkeypatch.setattr(segment_module, "_write_tile", original)
    written = count_tiles(monkeypatch)
    group = segment_to_zarr(image, out, model_path, **KW)
    assert (1, 2) in written
    assert_same_output(group, reference)


def test_other_settings_are_refused(tmp_path, image, model_path):
    out = tmp_path / "out.zarr"
    cancel = threading.Event()
    cancel.set()
    # Cancelled before its first tile: nothing worth resuming, so nothing is left to block a
    # retry with other settings (issue 11).
    with pytest.raises(Cancelled):
        segment_to_zarr(image, out, model_path, cancel=cancel, **KW)
    assert not out.exists()
    segment_to_zarr(image, out, model_path, **KW)
    with pytest.raises(ShiftSegError, match=r"different tile \(was 16x16, now 8x8\).*--overwrite"):
        segment_to_zarr(image, out, model_path, **{**KW, "tile": 8})
    with pytest.raises(ShiftSegError, match="different image content"):
        segment_to_zarr(image + 1, out, model_path, **KW)
    other = tiny_model(tmp_path / "other.safetensors", image, seed=1)
    with pytest.raises(ShiftSegError, match=r"different model \(other weights\)"):
        segment_to_zarr(image, out, other, **KW)
    assert zarr.open_group(out, mode="r").attrs["complete"] is True   # refusals touch nothing
    group = segment_to_zarr(image, out, other, overwrite=True, **KW)
    assert group.attrs["complete"] is True


def test_failure_before_the_first_tile_leaves_nothing(tmp_path, image, model_path, monkeypatch):
    """A run that fails before any tile (e.g. --device cuda on a CPU machine) removes what it
    created: the retry is a fresh run, not refused as "different". A folder the user made stays."""
    def no_device(*args, **kwargs):
        raise ShiftSegError("device cuda is not available")

    import napari_shiftseg.inference.predict

    monkeypatch.setattr(napari_shiftseg.inference.predict, "predict_embeddings", no_device)
    for out in (tmp_path / "new.zarr", tmp_path / "made_by_user.zarr"):
        if out.name.startswith("made"):
            out.mkdir()
        with pytest.raises(ShiftSegError, match="cuda"):
            segment_to_zarr(image, out, model_path, **KW)
        assert (out.is_dir() and not any(out.iterdir())) if out.name.startswith("made") else not out.exists()
    monkeypatch.undo()
    assert segment_to_zarr(image, out, model_path, **{**KW, "tile": 8}).attrs["complete"] is True


def test_new_clustering_settings_reuse_embeddings(tmp_path, image, model_path, reference, monkeypatch):
    out = tmp_path / "out.zarr"
    segment_to_zarr(image, out, model_path, **KW)
    written = count_tiles(monkeypatch)
    group = segment_to_zarr(image, out, model_path, **{**KW, "min_size": 1000})
    assert written == [] and group.attrs["complete"] is True
    assert group["labels/instances/0"][...].max() == 0
    group = recluster(out, bandwidth=1.0, min_size=3, n_seeds=100)
    assert written == []
    assert_same_output(group, reference)
    assert dict(group.attrs[ATTRS])["cluster_args"]["min_size"] == 3


def test_finished_output_is_not_recomputed(tmp_path, image, model_path, monkeypatch):
    out = tmp_path / "out.zarr"
    segment_to_zarr(image, out, model_path, **KW)
    written = count_tiles(monkeypatch)
    assert segment_to_zarr(image, out, model_path, **KW).attrs["complete"] is True
    assert written == []


def test_the_input_is_stored_once_as_the_ngff_image(tmp_path, image, model_path, monkeypatch):
    """issue 26: the output's NGFF image is the input. It is copied once every tile is done; a
    run interrupted during the copy copies it again (and no tile), a finished output or one
    labelled again is not copied again."""
    from napari_shiftseg.files.ngff import IMAGE

    copies = []
    original = segment_module.image_source
    monkeypatch.setattr(segment_module, "image_source",
                        lambda *args: copies.append(args[1]) or original(*args))
    out = tmp_path / "out.zarr"
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        segment_to_zarr(image, out, model_path, cancel=cancel,
                        stage=lambda name: name == "copying the image" and cancel.set(), **KW)
    group = zarr.open_group(out, mode="r")
    assert group["done"][...].all() and "input_stored" not in dict(group.attrs[ATTRS])
    assert "complete" not in group.attrs
    with pytest.raises(ShiftSegError, match="copy of the input .* is incomplete"):
        recluster(out, bandwidth=1.0)  # it would look complete, and never be copied

    written, stages = count_tiles(monkeypatch), []
    group = segment_to_zarr(image, out, model_path, stage=stages.append, **KW)
    assert written == [] and stages == ["tiles", "copying the image", "clustering", "labels"]
    assert copies == [(TILE, TILE)] * 2  # chunk by chunk, the labels' chunks
    np.testing.assert_array_equal(group[IMAGE][...], image)
    assert group[IMAGE].dtype == image.dtype and dict(group.attrs[ATTRS])["input_stored"] is True

    stages.clear()
    segment_to_zarr(image, out, model_path, stage=stages.append, **KW)  # finished: nothing to do
    segment_to_zarr(image, out, model_path, stage=stages.append, **{**KW, "min_size": 5})
    recluster(out, bandwidth=1.0, min_size=3, n_seeds=100, stage=stages.append)
    assert len(copies) == 2 and "copying the image" not in stages


def test_an_output_of_the_older_layout_still_opens_and_relabels(tmp_path):
    """Outputs written before issue 26 (the embeddings as the NGFF image, the input named by its
    path only) open in the napari reader with their input file, and label again without
    gaining a copy of the input."""
    from helpers import older_output

    from napari_shiftseg._reader import get_segmentation_reader, read_segmentation
    from napari_shiftseg.files.ngff import IMAGE, LABELS
    from napari_shiftseg.inference.segment import stored_plan

    out = older_output(tmp_path)
    group = zarr.open_group(out, mode="r")
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "embeddings"
    assert get_segmentation_reader(str(out)) is read_segmentation
    layers = read_segmentation(out)
    assert [kw["name"] for _, kw, _ in layers] == [
        "cells.tif", "embeddings [cells]", "foreground [cells]", "instances [cells]"]
    assert all(kw["scale"] == (0.25, 0.25) for _, kw, _ in layers)
    np.testing.assert_array_equal(np.asarray(layers[0][0]), tifffile.imread(tmp_path / "cells.tif"))
    assert int(np.asarray(layers[-1][0]).max()) == 18
    plan = stored_plan(out, UNetGeometry(ndim=2, levels=3))
    assert tuple(plan.tile) == (16, 16)
    group = recluster(out, bandwidth=0.5, min_size=3, fg_threshold=0.45)
    assert group.attrs["complete"] is True and group[LABELS][...].max() > 0
    assert IMAGE not in group and "input_stored" not in dict(group.attrs[ATTRS])


def test_bad_outputs_and_models(tmp_path, image, model_path):
    with pytest.raises(ShiftSegError, match=".zarr"):
        segment_to_zarr(image, tmp_path / "out.n5", model_path, **KW)
    foreign = zarr.open_group(tmp_path / "foreign.zarr", mode="w")
    foreign.create_array("x", shape=(2,), dtype="i4")
    with pytest.raises(ShiftSegError, match="not a shiftseg segmentation"):
        segment_to_zarr(image, tmp_path / "foreign.zarr", model_path, **KW)
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(ShiftSegError, match="not a zarr output"):
        segment_to_zarr(image, tmp_path / "notes.zarr", model_path, overwrite=True, **KW)
    assert (tmp_path / "notes.zarr" / "notes.txt").exists()
    model3d = tiny_model(tmp_path / "m3.safetensors", np.zeros((28, 28, 28), np.float32), ndim=3)
    with pytest.raises(ShiftSegError, match="model is 3D but the image is 2D"):
        segment_to_zarr(image, tmp_path / "o3.zarr", model3d, **KW)
    assert not (tmp_path / "o3.zarr").exists()
    with pytest.raises(ShiftSegError, match="bandwidth"):
        segment_to_zarr(image, tmp_path / "o4.zarr", model_path, **{**KW, "bandwidth": -1.0})
    with pytest.raises(ShiftSegError, match="not a shiftseg segmentation"):
        recluster(tmp_path / "foreign.zarr")
    group = segment_to_zarr(image, tmp_path / "o5.zarr", model_path, **KW)
    group["done"][1, 2] = False          # as if a run had stopped before that tile
    with pytest.raises(ShiftSegError, match="incomplete"):
        recluster(tmp_path / "o5.zarr")


def threshold_model(path, ndim=2):
    """Hand-set U-Net: foreground logit 20·(normalised intensity − 0.5), constant embeddings."""
    net = UNet(UNetConfig(geometry=UNetGeometry(ndim=ndim, levels=2), base_channels=2, embed_dim=2))
    with torch.no_grad():
        for param in net.parameters():
            param.zero_()
        for block in (net.down[0], net.up[0]):  # channel 0 carries the input through
            for layer in block:
                if isinstance(layer, torch.nn.modules.conv._ConvNd):
                    layer.weight[(0, 0) + (1,) * ndim] = 1.0
        net.head.weight[(-1, 0) + (0,) * ndim] = 20.0
        net.head.bias[:] = torch.tensor([1.0, -1.0, -10.0])
    return save_model(net.eval(), path)


def test_synthetic_objects_are_recovered(tmp_path):
    from sklearn.metrics import adjusted_rand_score

    from napari_shiftseg.synthetic.synth import random_objects

    image, truth = random_objects((72, 88), radius=4, density=0.2, noise_std=0.05, seed=2)
    group = segment_to_zarr(image, tmp_path / "out.zarr", threshold_model(tmp_path / "t.safetensors"),
                            tile=16, device="cpu", bandwidth=1.0, min_size=5, n_seeds=50)
    labels = group["labels/instances/0"][...]
    # one embedding for all objects: only the connected components across tiles separate them
    assert len(Clustering.from_dict(dict(group.attrs[ATTRS])["clustering"]).modes) == 1
    assert labels.max() == truth.max() > 10
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) >= 0.99


def test_model_without_foreground_head(tmp_path, image):
    torch.manual_seed(0)
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4, embed_dim=2,
                        foreground_head=False)
    path = save_model(UNet(config).eval(), tmp_path / "nofg.safetensors")
    group = segment_to_zarr(image, tmp_path / "out.zarr", path, **{**KW, "min_size": 0})
    assert "foreground" not in group and group["embeddings"].shape == (2, *SHAPE)
    clustering = Clustering.from_dict(dict(group.attrs[ATTRS])["clustering"])
    assert not clustering.foreground and clustering.background is not None
    labels = group["labels/instances/0"][...]
    assert (labels == 0).any()  # the most populous cluster is the background
    with pytest.raises(ShiftSegError, match="connectivity"):
        segment_to_zarr(image, tmp_path / "c.zarr", path, **{**KW, "connectivity": 3})


def test_image_path_and_3d(tmp_path):
    rng = np.random.default_rng(1)
    volume = (rng.random((20, 24, 20)) > 0.7).astype(np.float32)
    np.save(tmp_path / "vol.npy", volume)
    model = tiny_model(tmp_path / "m3.safetensors", volume, ndim=3)
    group = segment_to_zarr(tmp_path / "vol.npy", tmp_path / "vol.zarr", model, tile=8,
                            device="cpu", bandwidth=1.0, min_size=2, n_seeds=50)
    assert group["labels/instances/0"].shape == volume.shape and group["done"].shape == (3, 3, 3)
    assert group.attrs["complete"] is True


def test_recorded_settings_reach_the_zarr_job(tmp_path, image, model_path):
    """Tuned settings stored in the model (post-processing included) are what the job applies."""
    from napari_shiftseg.network.modelio import save_model

    model = load_model(model_path)
    model.meta.update(fg_threshold=0.4, merge_distance=1.5, absorb_small=True, fill_holes=True, min_size=4)
    tuned = save_model(model, tmp_path / "tuned.safetensors")
    group = segment_to_zarr(image, tmp_path / "out.zarr", tuned, tile=KW["tile"], device="cpu")
    info = dict(group.attrs[ATTRS])
    args = info["cluster_args"]
    assert (args["fg_threshold"], args["merge_distance"], args["absorb_small"], args["fill_holes"],
            args["min_size"]) == (0.4, 1.5, True, True, 4)
    clustering = Clustering.from_dict(info["clustering"])
    expected = label_instances(da.from_zarr(group["embeddings"]), clustering, min_size=4,
                               merge_distance=1.5, absorb_small=True, fill_holes=True).compute()
    np.testing.assert_array_equal(group["labels/instances/0"][...], expected)
    # A caller's value wins over the recorded one.
    group = segment_to_zarr(image, tmp_path / "off.zarr", tuned, tile=KW["tile"], device="cpu",
                            merge_distance=0.0, fill_holes=False)
    args = dict(group.attrs[ATTRS])["cluster_args"]
    assert args["merge_distance"] == 0.0 and args["fill_holes"] is False and args["absorb_small"] is True


def test_a_resampled_run_keeps_labels_on_the_image_grid(tmp_path, image, model_path):
    """A model that records the object size it learnt (6 px here), told this image's objects
    are 3 px: the tiles run on the image upsampled 2x (exactly, as on any image), the labels
    are read back onto the image's grid, and a resume with another size is refused."""
    from napari_shiftseg.imaging import rescale

    model = load_model(model_path)
    model.meta["object_diameter"] = 6.0
    sized = save_model(model, tmp_path / "sized.safetensors")
    out = tmp_path / "big.zarr"
    group = segment_to_zarr(image, out, sized, diameter=3.0, **KW)
    working = tuple(2 * n for n in SHAPE)
    assert group["embeddings"].shape[1:] == working and group["labels/instances/0"].shape == SHAPE
    assert group.attrs[ATTRS]["resampled"] == {"image_shape": list(SHAPE), "working_shape": list(working)}
    whole = predict_whole(rescale.resize_image(image, shape=working), load_model(sized), device="cpu")
    # Float summation order differs between tile and whole-image convolutions (oneDNN picks
    # per shape and thread count): one voxel in 26880 was measured 1.05e-5 off with 1 thread.
    np.testing.assert_allclose(group["embeddings"][...], whole, rtol=1e-5, atol=5e-5)
    np.testing.assert_array_equal(group["labels/instances/0"][...], group["labels_resampled"][1::2, 1::2])
    assert group["labels/instances/0"][...].max() > 0
    with pytest.raises(ShiftSegError, match=r"object-size resampling \(resampled image shape\) "
                                            r"\(was 80x112, now none: as imaged\)"):
        segment_to_zarr(image, out, sized, diameter=None, **KW)
    # Re-clustering writes both label arrays again.
    again = recluster(out, bandwidth=0.5, min_size=1)
    np.testing.assert_array_equal(again["labels/instances/0"][...], again["labels_resampled"][1::2, 1::2])
    # Without a recorded size nothing is resampled, whatever the diameter says.
    plain = segment_to_zarr(image, tmp_path / "plain.zarr", model_path, diameter=3.0, **KW)
    assert plain["embeddings"].shape[1:] == SHAPE and "labels_resampled" not in plain


def test_a_2d_model_on_a_stack_runs_slice_by_slice_and_links_across_z(tmp_path, image, model_path):
    """Each slice is tiled exactly in the plane; an object present in consecutive slices
    (same embedding cluster, touching across z) is one 3D object."""
    stack = np.stack([image] * 4)                       # the same nuclei in four planes
    out = segment_to_zarr(stack, tmp_path / "stack.zarr", model_path, **KW)
    assert out.attrs[ATTRS]["embedding_args"]["per_slice"] is True
    whole = predict_whole(stack, load_model(model_path), device="cpu", per_slice=True)
    np.testing.assert_allclose(out["embeddings"][...], whole, rtol=1e-5, atol=1e-5)
    labels = out["labels/instances/0"][...]
    # Identical planes have identical embeddings, hence identical clusters: every object runs
    # through all four planes with the same outline (linked, never one object per plane).
    ids = np.unique(labels[labels > 0])
    assert len(ids) > 5
    for i in ids:
        planes = labels == i
        assert planes.any(axis=(1, 2)).all()
        np.testing.assert_array_equal(planes[0], planes[3])
    with pytest.raises(ShiftSegError, match="per_slice runs a 2D model on a 3D image"):
        segment_to_zarr(image, tmp_path / "x.zarr", model_path, per_slice=True, **KW)
    with pytest.raises(ShiftSegError, match="the model is 2D but the image is 3D"):
        segment_to_zarr(stack, tmp_path / "y.zarr", model_path, per_slice=False, **KW)


def test_bundled_models_by_name():
    from napari_shiftseg.inference.segment import _load_model

    assert _load_model("bundled:2", 3).geometry.ndim == 2
    assert _load_model("bundled:3:disks", 2).path.name.startswith("disks_3d")
    with pytest.raises(ShiftSegError, match="unknown bundled model 'bundled:4'"):
        _load_model("bundled:4", 2)


def test_isotropic_resampling_of_an_anisotropic_stack(tmp_path):
    """z step 3x the pixel size: the network sees 3x the planes (cubic voxels); the labels come
    back on the stack's own grid; without a voxel size the request is refused."""
    from napari_shiftseg.imaging import rescale

    rng = np.random.default_rng(3)
    stack = rng.random((6, 24, 28)).astype(np.float32)
    model = save_standardized(tmp_path / "m3.safetensors", np.zeros((24, 24, 24), np.float32), ndim=3)
    group = segment_to_zarr(stack, tmp_path / "iso.zarr", model, tile=16, device="cpu",
                            bandwidth=1.0, min_size=1, isotropic=True, voxel_size=(3.0, 1.0, 1.0))
    assert group["embeddings"].shape[1:] == (18, 24, 28) and group["labels/instances/0"].shape == stack.shape
    np.testing.assert_array_equal(group["labels/instances/0"][...],
                                  rescale.resize_labels(group["labels_resampled"][...], stack.shape))
    assert group.attrs[ATTRS]["voxel_size"] == [3.0, 1.0, 1.0]
    with pytest.raises(ShiftSegError, match="isotropic resampling needs the voxel size"):
        segment_to_zarr(stack, tmp_path / "x.zarr", model, tile=16, device="cpu", isotropic=True)
    with pytest.raises(ShiftSegError, match=r"voxel size \(1.0, 1.0\) has 2 values but the image is 3D"):
        segment_to_zarr(stack, tmp_path / "y.zarr", model, tile=16, device="cpu", isotropic=True,
                        voxel_size=(1.0, 1.0))
    assert rescale.isotropic_factors((3.0, 0.5, 0.5), 3) == (6.0, 1.0, 1.0)


def test_an_anisotropic_stack_gets_cubic_voxels_without_being_asked(tmp_path):
    """issue 24: a 3D model on a stack whose voxel size is anisotropic runs on cubic voxels by
    default; isotropic=False keeps the stack's voxels; the decision is recorded in words."""
    stack = np.random.default_rng(4).random((6, 24, 28)).astype(np.float32)
    model = save_standardized(tmp_path / "m3.safetensors", np.zeros((24, 24, 24), np.float32), ndim=3)
    group = segment_to_zarr(stack, tmp_path / "auto.zarr", model, tile=16, device="cpu",
                            bandwidth=1.0, min_size=1, voxel_size=(3.0, 1.0, 1.0))
    assert group["embeddings"].shape[1:] == (18, 24, 28) and group["labels/instances/0"].shape == stack.shape
    assert "voxels made cubic (3 x 1 x 1 per axis)" in group.attrs[ATTRS]["size_note"]
    kept = segment_to_zarr(stack, tmp_path / "kept.zarr", model, tile=16, device="cpu",
                           bandwidth=1.0, min_size=1, voxel_size=(3.0, 1.0, 1.0), isotropic=False)
    assert kept["embeddings"].shape[1:] == stack.shape


def test_a_thin_stack_runs_the_2d_model_plane_by_plane(tmp_path):
    """issue 24: with no model named, a stack thinner than its nuclei (cut nuclei the 3D model
    never saw) is segmented by the bundled 2D model slice by slice, and the run says so."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :160]
    plane = np.zeros((160, 160), np.float32)
    for cy, cx in [(40, 40), (40, 120), (120, 40), (120, 120), (80, 80)]:
        plane += ((yy - cy) ** 2 + (xx - cx) ** 2 <= 15**2) * rng.uniform(0.6, 1.0)
    stack = np.stack([plane] * 3) + rng.normal(0, 0.03, (3, 160, 160)).astype(np.float32)
    path = tmp_path / "slab.tif"
    tifffile.imwrite(path, stack.astype(np.float32), imagej=True, resolution=(5.0, 5.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    group = segment_to_zarr(path, tmp_path / "slab.zarr", None, tile=64, device="cpu", diameter="auto")
    info = group.attrs[ATTRS]
    assert info["embedding_args"].get("per_slice") is True
    assert "2D model ran plane by plane" in info["size_note"] and "z projection" in info["size_note"]
    assert 3 <= info["n_objects"] <= 7
