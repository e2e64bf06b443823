"""issue 9: never lose or corrupt a user's data, and refuse hostile inputs cheaply.

One regression test per defect (numbers refer to the issue), all on tiny arrays; hostile model
configs are refused from their size estimate, before anything is allocated.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import run_bounded, save_standardized, tiny_net  # noqa: E402
from safetensors.torch import save_file

from napari_shiftseg.cli import main
from napari_shiftseg.files import _replace
from napari_shiftseg.files._lock import OutputLock, lock_path
from napari_shiftseg.inference import segment as segment_module
from napari_shiftseg.inference.segment import segment_to_zarr
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import FORMAT, load_model, read_metadata, save_model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError, failure_message

KW = dict(tile=16, device="cpu", bandwidth=1.0, min_size=3, n_seeds=100)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return (rng.random((32, 40)) > 0.6).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, image):
    return save_standardized(tmp_path_factory.mktemp("model") / "m.safetensors", image)


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    last = err[-1]
    assert last.startswith("shiftseg ") and "error:" in last, err
    for word in words:
        assert word in last, last
    return last


# --------------------------------------------------------------------------- 1. data loss


def test_overwrite_refuses_an_input_inside_or_equal_to_the_output(tmp_path, image, model_path, capsys):
    source = tmp_path / "img.zarr"
    zarr.save_array(str(source), image)
    before = zarr.open_array(source, mode="r")[...]
    args = ["segment", str(source), "-m", str(model_path), "--tile", "16", "--device", "cpu",
            "--overwrite", "--quiet"]
    assert main(args + ["-o", str(source)]) == 2
    one_line_error(capsys, "would destroy the input")
    np.testing.assert_array_equal(zarr.open_array(source, mode="r")[...], before)
    # an array inside an earlier output
    out = tmp_path / "out.zarr"
    assert main(args[:1] + [str(source)] + args[2:] + ["-o", str(out)]) == 0
    capsys.readouterr()
    fg = zarr.open_group(out, mode="r")["foreground"][...]
    assert main(args[:1] + [f"{out}/foreground"] + args[2:] + ["-o", str(out)]) == 2
    one_line_error(capsys, "would destroy the input")
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["foreground"][...], fg)


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, image, model_path,
                                                                      monkeypatch):
    out = tmp_path / "out.zarr"
    segment_to_zarr(image, out, model_path, **KW)
    labels = zarr.open_group(out, mode="r")["labels/instances/0"][...]

    def crash(*args, **kwargs):
        raise RuntimeError("crash in the label stage")

    monkeypatch.setattr(segment_module, "_label", crash)
    with pytest.raises(RuntimeError, match="crash"):
        segment_to_zarr(image * 2, out, model_path, overwrite=True, **KW)
    old = zarr.open_group(out, mode="r")
    assert old.attrs["complete"] is True  # untouched
    np.testing.assert_array_equal(old["labels/instances/0"][...], labels)
    monkeypatch.undo()
    new = segment_to_zarr(image[::-1].copy(), out, model_path, overwrite=True, **KW)
    assert new.attrs["complete"] is True and str(new.store_path).rstrip("/").endswith("out.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no staging, no lock left
    fresh = segment_to_zarr(image[::-1].copy(), tmp_path / "fresh.zarr", model_path, **KW)
    np.testing.assert_array_equal(new["labels/instances/0"][...], fresh["labels/instances/0"][...])


@pytest.mark.parametrize("sibling", [".out.zarr.new", ".out.zarr.old"])
def test_overwrite_never_deletes_a_folder_it_did_not_make(tmp_path, image, model_path, sibling):
    """A user's folder (or a planted symlink) named like --overwrite's temporaries is refused,
    untouched; an input inside such a folder is refused before anything runs."""
    out = tmp_path / "out.zarr"
    segment_to_zarr(image, out, model_path, **KW)
    mine = tmp_path / sibling
    mine.mkdir()
    (mine / "notes.txt").write_text("my data")
    with pytest.raises(ShiftSegError, match="was not made by shiftseg"):
        segment_to_zarr(image * 2, out, model_path, overwrite=True, **KW)
    assert (mine / "notes.txt").read_text() == "my data"
    zarr.save_array(str(mine / "input.zarr"), image)
    with pytest.raises(ShiftSegError, match="would destroy the input"):
        segment_to_zarr(str(mine / "input.zarr"), out, model_path, overwrite=True, **KW)
    assert (mine / "input.zarr").is_dir()
    # a symlink planted there is never followed, nor removed
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    shutil.rmtree(mine)
    mine.symlink_to(target, target_is_directory=True)
    with pytest.raises(ShiftSegError, match="was not made by shiftseg"):
        segment_to_zarr(image * 2, out, model_path, overwrite=True, **KW)
    assert (target / "keep.txt").read_text() == "x" and mine.is_symlink()
    assert zarr.open_group(out, mode="r").attrs["complete"] is True


@pytest.mark.parametrize("crash_at", ["between renames", "before deleting the old copy"])
def test_an_interrupted_overwrite_is_recovered_by_the_next_run(tmp_path, image, model_path,
                                                               monkeypatch, caplog, crash_at):
    out = tmp_path / "out.zarr"
    segment_to_zarr(image, out, model_path, **KW)

    def swap(new, path):  # the process dies part way through segment._swap_in's renames
        os.replace(path, _replace.retired_path(path))
        if crash_at == "before deleting the old copy":
            os.replace(new, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(segment_module, "_swap_in", swap)
    with pytest.raises(KeyboardInterrupt):
        segment_to_zarr(image[::-1].copy(), out, model_path, overwrite=True, **KW)
    monkeypatch.undo()
    assert (tmp_path / ".out.zarr.old").is_dir()
    assert out.exists() == (crash_at != "between renames")
    # the next run (here a plain resume of the new settings) repairs it and says so
    with caplog.at_level("WARNING"):
        group = segment_to_zarr(image[::-1].copy(), out, model_path, **KW)
    assert "interrupted --overwrite" in caplog.text or "stopped between its renames" in caplog.text
    assert group.attrs["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    fresh = segment_to_zarr(image[::-1].copy(), tmp_path / "fresh.zarr", model_path, **KW)
    np.testing.assert_array_equal(group["labels/instances/0"][...], fresh["labels/instances/0"][...])


# --------------------------------------------------------------------------- 2./7. model files


def write_model(path, config: dict, meta="{}", state=None):
    state = state if state is not None else {"w": torch.zeros(1)}
    save_file(state, str(path), metadata={"format": FORMAT, "config": json.dumps(config),
                                          "meta": meta if isinstance(meta, str) else json.dumps(meta),
                                          "version": "0"})
    return path


def base_config(**changes):
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2).to_dict()
    geometry = {k: changes.pop(k) for k in list(changes) if k in config["geometry"]}
    config["geometry"].update(geometry)
    config.update(changes)
    return config


HOSTILE = {
    "base_channels=1000": (dict(base_channels=1000), "base_channels"),
    "levels=30": (dict(levels=30), "levels"),
    "convs_per_level=10**6": (dict(convs_per_level=10**6), "convs_per_level"),
    "levels=3.5": (dict(levels=3.5), "whole number"),
    "factor=4, levels=4, kernel 7": (dict(factor=4, levels=4, kernel_size=7, convs_per_level=4, ndim=3),
                                     "smallest tile"),
    "growth 4, base 256": (dict(base_channels=256, channel_growth=4, levels=3), "parameters"),
    "embed_dim=10**9": (dict(embed_dim=10**9), "embed_dim"),
    "foreground_head='yes'": (dict(foreground_head="yes"), "true or false"),
    "geometry=[1,2]": (dict(geometry=[1, 2]), "geometry"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_configs_are_refused_from_the_metadata(tmp_path, name, monkeypatch):
    changes, word = HOSTILE[name]
    path = write_model(tmp_path / "m.safetensors", base_config(**changes))
    built = []
    monkeypatch.setattr(UNet, "__init__", lambda *a, **k: built.append(1) or (_ for _ in ()).throw(
        AssertionError("a network was built")))
    with pytest.raises(ShiftSegError, match=word) as info:
        load_model(path)
    assert "\n" not in str(info.value) and not built


@pytest.mark.parametrize("meta, word", [([1, 2], "dictionary"), ({"bandwidth": "abc"}, "bandwidth"),
                                        ({"loss": {"delta_d": "abc"}}, "unreadable"),
                                        ("{not json", "unreadable")])
def test_malformed_meta_is_one_line(tmp_path, meta, word):
    path = write_model(tmp_path / "m.safetensors", base_config(), meta=meta)
    with pytest.raises(ShiftSegError, match=word) as info:
        read_metadata(path)
    assert "\n" not in str(info.value)


def test_tensor_names_and_shapes_are_checked_before_reading_weights(tmp_path):
    config = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2)
    good = {k: v.contiguous() for k, v in UNet(config).state_dict().items()}
    name = sorted(good)[0]
    wrong = dict(good, **{name: torch.zeros(3, 3)})
    path = write_model(tmp_path / "shape.safetensors", config.to_dict(), state=wrong)
    with pytest.raises(ShiftSegError, match=f"{name} has shape"):
        load_model(path)
    extra = dict(good, extra=torch.zeros(1))
    with pytest.raises(ShiftSegError, match="unexpected extra"):
        load_model(write_model(tmp_path / "extra.safetensors", config.to_dict(), state=extra))
    ints = dict(good, **{name: good[name].to(torch.int32)})
    with pytest.raises(ShiftSegError, match="floating point"):
        load_model(write_model(tmp_path / "int.safetensors", config.to_dict(), state=ints))


def test_non_finite_weights_are_refused(tmp_path):
    net = tiny_net()
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    with pytest.raises(ShiftSegError, match="NaN or infinite"):
        load_model(save_model(net, tmp_path / "nan.safetensors"))


def test_size_estimate_matches_the_built_network():
    for geometry, extra in [(dict(ndim=2, levels=2), {}), (dict(ndim=3, levels=3, convs_per_level=1,
                            kernel_size=5), dict(upsampling="nearest", foreground_head=False)),
                            (dict(ndim=2, levels=1, factor=3, convs_per_level=3), dict(channel_growth=1))]:
        config = UNetConfig(geometry=UNetGeometry(**geometry), base_channels=3, **extra)
        with torch.device("meta"):
            net = UNet(config)
        assert config.estimate()[0] == sum(p.numel() for p in net.parameters())


def test_unreadable_files_are_explained_without_reading_them_whole(tmp_path, model_path, monkeypatch):
    data = model_path.read_bytes()
    monkeypatch.setattr("pathlib.Path.read_bytes", lambda self: pytest.fail("read the whole file"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(ShiftSegError, match="truncated") as info:
        load_model(truncated)
    assert "pickle" not in str(info.value)
    header_cut = tmp_path / "header.safetensors"
    header_cut.write_bytes(data[:40])
    with pytest.raises(ShiftSegError, match="truncated model file"):
        load_model(header_cut)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ShiftSegError, match="is a directory"):
        load_model(tmp_path / "dir.safetensors")
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    with pytest.raises(ShiftSegError, match="is a device .through a symbolic link"):
        load_model(tmp_path / "zero.safetensors")
    os.mkfifo(tmp_path / "fifo.safetensors")
    with pytest.raises(ShiftSegError, match="named pipe"):
        load_model(tmp_path / "fifo.safetensors")  # never opened: opening would block
    (tmp_path / "broken.safetensors").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ShiftSegError, match="broken symbolic link"):
        load_model(tmp_path / "broken.safetensors")


_PEAK = """
import resource, sys
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.network.modelio import load_model
base = peak_mib()
for path in sys.argv[1:]:
    try:
        load_model(path)
    except ShiftSegError:
        pass
    else:
        raise SystemExit(f"{path} was accepted")
print(peak_mib() - base)
"""


def test_hostile_models_are_refused_in_little_memory(tmp_path):
    """Peak memory (measured in a fresh process) of refusing every hostile model above."""
    paths = [str(write_model(tmp_path / f"h{i}.safetensors", base_config(**changes)))
             for i, (changes, _) in enumerate(HOSTILE.values())]
    result = run_bounded(_PEAK, *paths)  # 1 GiB of data, 30 CPU seconds at most
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 300  # MiB above the interpreter with torch loaded


# --------------------------------------------------------------------------- 3. stale resume


def test_resume_on_an_edited_image_is_refused(tmp_path, image, model_path):
    out = tmp_path / "out.zarr"
    segment_to_zarr(image, out, model_path, **KW)
    edited = image.copy()
    edited[20, 1::3] += 1.0  # one row, off any strided sample grid
    with pytest.raises(ShiftSegError, match=r"different image content .*planes 0-31") as info:
        segment_to_zarr(edited, out, model_path, **KW)
    assert "\n" not in str(info.value)


def test_fingerprint_sees_every_voxel_and_ignores_chunking(image, monkeypatch):
    import dask.array as da

    monkeypatch.setattr(segment_module, "_FINGERPRINT_SLAB", 8 * 40 * 4)  # 8 planes per slab
    plain = segment_module._image_fingerprint(image)
    assert len(plain["slabs"]) == 4
    assert segment_module._image_fingerprint(da.from_array(image, chunks=(5, 7)))["digest"] == plain["digest"]
    for y, x in [(0, 0), (17, 39), (31, 5)]:
        edited = image.copy()
        edited[y, x] = np.nextafter(edited[y, x], np.float32(2))
        changed = segment_module._image_fingerprint(edited)
        assert changed["digest"] != plain["digest"]
        assert "planes " + f"{y // 8 * 8}-{y // 8 * 8 + 7}" in segment_module._changed_planes(plain, changed)


# --------------------------------------------------------------------------- 4. concurrent runs


_SLOW = """
import sys, time
import napari_shiftseg.inference.segment as s
label = s._label
def slow(*args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return label(*args, **kwargs)
s._label = slow
from napari_shiftseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_two_segment_processes_on_one_output(tmp_path, image, model_path):
    np.save(tmp_path / "img.npy", image)
    out = tmp_path / "out.zarr"
    args = ["segment", str(tmp_path / "img.npy"), "-m", str(model_path), "-o", str(out), "--tile",
            "16", "--device", "cpu", "--bandwidth", "1.0", "--min-size", "3", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-c", _SLOW, "20", *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not lock_path(out).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_path(out).exists(), first.communicate()
        second = subprocess.run([sys.executable, "-m", "napari_shiftseg.cli", *args], env=env,
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second one tried"
    finally:
        first_out, first_err = first.communicate(timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"process {first.pid} on host" in second.stderr and "in use" in second.stderr
    assert first.returncode == 0, first_err
    single = segment_to_zarr(image, tmp_path / "single.zarr", model_path, **KW)
    result = zarr.open_group(out, mode="r")
    assert result.attrs["complete"] is True and not lock_path(out).exists()
    for name in ("embeddings", "labels/instances/0"):
        np.testing.assert_array_equal(result[name][...], single[name][...])


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, image, model_path, caplog):
    out = tmp_path / "out.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock_path(out).write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename, "since": 0}))
    group = segment_to_zarr(image, out, model_path, **KW)
    assert group.attrs["complete"] is True and not lock_path(out).exists()
    assert f"process {dead}" in caplog.text and "stale" in caplog.text
    with OutputLock(out):  # held in this process: another taker is refused, naming us
        with pytest.raises(ShiftSegError, match=f"process {os.getpid()} on host"):
            segment_to_zarr(image, out, model_path, **KW)


def test_a_symlink_planted_at_the_lock_is_never_written_through(tmp_path, image, model_path):
    """issue 25: a symlink at .OUT.zarr.lock must not make the run write the lock's JSON into
    the link's target; the run is refused with one line and the target is untouched."""
    out = tmp_path / "out.zarr"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, lock_path(out))
    with pytest.raises(ShiftSegError, match="symbolic link"):
        segment_to_zarr(image, out, model_path, **KW)
    assert victim.read_text() == "keep me" and not out.exists()


# --------------------------------------------------------------------------- 5. NaN


def test_non_finite_embeddings_stop_the_run_naming_the_tile(tmp_path, image):
    net = tiny_net(levels=2, base=2)
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    out = tmp_path / "out.zarr"
    with pytest.raises(ShiftSegError, match=r"NaN or infinite .*\[0:16, 0:16\]|NaN or infinite .*tile"):
        segment_to_zarr(image, out, net, **KW)
    # It failed before any tile was written: nothing to resume, so nothing is left behind.
    assert not out.exists()


def test_check_exits_non_zero_on_nan(tmp_path, image, capsys):
    net = tiny_net(levels=2, base=2)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1e30)  # finite weights, infinite outputs
    np.save(tmp_path / "img.npy", image + 1)
    path = save_model(net, tmp_path / "huge.safetensors")
    assert main(["check", str(tmp_path / "img.npy"), "-m", str(path), "--tile", "16",
                 "--device", "cpu"]) == 2
    one_line_error(capsys, "NaN or infinite")


# --------------------------------------------------------------------------- 6. one-line errors


def test_tiny_and_truncated_tiffs_are_one_line_errors(tmp_path, model_path, capsys):
    (tmp_path / "six.tif").write_bytes(b"II*\x00\x08\x00")
    tifffile.imwrite(tmp_path / "z.tif", np.random.default_rng(0).random((64, 64)).astype(np.float32),
                     compression="zlib")
    data = (tmp_path / "z.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    for name in ("six.tif", "cut.tif"):
        code = main(["segment", str(tmp_path / name), "-m", str(model_path), "-o",
                     str(tmp_path / "out.zarr"), "--device", "cpu", "--quiet"])
        assert code in (2, 3)
        one_line_error(capsys, name if code == 2 else "corrupt")


@pytest.mark.parametrize("err, code, word", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.zarr/embeddings/c/0/0/0"), 3, "no space"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out.zarr"), 3, "permission denied"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), 3,
     "not enough memory"),
    (MemoryError(), 3, "not enough memory"),
    (__import__("zlib").error("Error -3 while decompressing data"), 3, "corrupt"),
])
def test_environment_failures_are_one_line_with_their_own_exit_code(tmp_path, image, model_path,
                                                                    monkeypatch, capsys, err, code, word):
    np.save(tmp_path / "img.npy", image)

    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(segment_module, "_write_tile", fail)
    assert main(["segment", str(tmp_path / "img.npy"), "-m", str(model_path), "-o",
                 str(tmp_path / "out.zarr"), "--tile", "16", "--device", "cpu", "--quiet"]) == code
    one_line_error(capsys, word)
    assert failure_message(err) is not None  # the widgets' worker shows the same line


def test_bugs_keep_their_traceback(tmp_path, image, model_path, monkeypatch):
    monkeypatch.setattr(segment_module, "_write_tile", lambda *a: 1 / 0)
    np.save(tmp_path / "img.npy", image)
    with pytest.raises(ZeroDivisionError):
        main(["segment", str(tmp_path / "img.npy"), "-m", str(model_path), "-o",
              str(tmp_path / "out.zarr"), "--tile", "16", "--device", "cpu", "--quiet"])


# --------------------------------------------------------------------------- 9. cheap refusals


def test_synth_refuses_impossible_requests_at_once(tmp_path, capsys):
    start = time.monotonic()
    assert main(["synth", "random", "--shape", "64,64", "--n-objects", "100000", "-o", str(tmp_path)]) == 2
    one_line_error(capsys, "cannot fit")
    assert main(["synth", "random", "--shape", "200000,200000", "-o", str(tmp_path)]) == 2
    one_line_error(capsys, "voxels")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "image.tif").exists()
