"""``shiftseg synth`` and ``shiftseg train`` command lines."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_shiftseg.cli import main
from napari_shiftseg.network.modelio import load_model
from napari_shiftseg.synthetic import synth

# Tiny network settings: l = 2 (f^l = 4), 4 base channels, 12-pixel windows.
NET = ["--levels", "2", "--base-channels", "4"]
RUN = ["--window", "12", "--steps", "3", "--quiet"]
TINY = NET + RUN


def _one_line_error(capsys, code, argv, match):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"shiftseg {argv[0]}: error: ") and match in err, err


def test_synth_lattice_writes_tiffs(tmp_path, capsys):
    out = tmp_path / "lattice"
    assert main(["synth", "lattice", "--shape", "64,64", "--spacing", "15", "--radius", "5", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image, labels = tifffile.imread(out / "image.tif"), tifffile.imread(out / "labels.tif")
    want_image, want_labels = synth.lattice((64, 64), 15, radius=5)
    np.testing.assert_array_equal(image, want_image)
    np.testing.assert_array_equal(labels, want_labels)
    assert image.dtype == np.float32 and labels.dtype == np.uint16


def test_synth_random_3d_uint8(tmp_path):
    out = tmp_path / "spheres"
    argv = ["synth", "random", "--ndim", "3", "--shape", "20x32x32", "--n-objects", "4", "--noise", "0.1",
            "--seed", "5", "--dtype", "uint8", "-o", str(out)]
    assert main(argv) == 0
    image, labels = tifffile.imread(out / "image.tif"), tifffile.imread(out / "labels.tif")
    _, want_labels = synth.random_objects((20, 32, 32), n_objects=4, noise_std=0.1, seed=5)
    assert image.dtype == np.uint8 and image.shape == (20, 32, 32)
    assert image.min() == 0 and image.max() == 255
    np.testing.assert_array_equal(labels, want_labels)


def test_synth_bad_arguments(tmp_path, capsys):
    _one_line_error(capsys, 2, ["synth", "random", "--ndim", "3", "--shape", "64,64", "-o", str(tmp_path)],
                    "is 2D but --ndim is 3")
    _one_line_error(capsys, 2, ["synth", "lattice", "--spacing", "8", "--radius", "5", "-o", str(tmp_path)],
                    "spacing")
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, 2, ["synth", "lattice", "-o", str(tmp_path / "file")], "not a directory")
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "hexagonal", "-o", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "invalid choice: 'hexagonal'" in err.splitlines()[-1]


@pytest.fixture(scope="module")
def tif_pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["synth", "random", "--shape", "48,48", "--n-objects", "10", "--radius", "4",
                 "--noise", "0.05", "-o", str(out)]) == 0
    return out / "image.tif", out / "labels.tif"


def test_train_on_files(tif_pair, tmp_path, capsys):
    model_path = tmp_path / "model.safetensors"
    argv = ["train", "--image", str(tif_pair[0]), "--labels", str(tif_pair[1]), *TINY,
            "--checkpoint-every", "2", "-o", str(model_path)]
    assert main(argv) == 0
    assert "done: 3 steps" in capsys.readouterr().out
    model = load_model(model_path)
    assert model.geometry.levels == 2 and model.config.base_channels == 4
    assert model.meta["steps"] == 3 and model.meta["complete"] is True
    assert model.meta["training_window"] == [12, 12]
    command = model.meta["command"]
    assert command.startswith("shiftseg train --image ") and "--window 12" in command
    # Continue training from the saved model.
    again = tmp_path / "again.safetensors"
    assert main(["train", "--image", str(tif_pair[0]), "--labels", str(tif_pair[1]), *RUN,
                 "--init", str(model_path), "-o", str(again)]) == 0
    again_command = load_model(again).meta
    assert again_command["initialised_from"]["command"] == command
    # Ignored options are not recorded: no network options with --init, no object options
    # without --synthetic.
    assert "--init" in again_command["command"] and "--levels" not in again_command["command"]
    assert "--radius" not in command and "--levels 2" in command


def test_train_synthetic_with_evaluation(tmp_path, capsys):
    model_path = tmp_path / "synthetic.safetensors"
    argv = ["train", "--synthetic", "random", "--n-objects", "6", "--radius", "4", *TINY,
            "--lr-schedule", "cosine", "--eval-images", "1", "--eval-shape", "40,40",
            "--bandwidth", "2", "--min-size", "20", "-o", str(model_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "AP@0.5" in out
    meta = load_model(model_path).meta
    assert meta["bandwidth"] == 2.0 and meta["min_size"] == 20
    assert meta["metrics"]["images"] == 1 and 0.0 <= meta["metrics"]["ap@0.5"] <= 1.0
    assert meta["training_data"] == "synthetic generator" and meta["lr_schedule"] == "cosine"


@pytest.mark.parametrize("extra, match", [
    (["--window", "4"], "larger than f^l = 4"),
    (["--labels", "missing.tif"], "give one --labels per --image"),
    (["--synthetic", "random"], "not both"),
    (["-o", "model.pt"], "must end in .safetensors"),
    (["--eval-images", "2"], "--eval-images needs --synthetic"),
])
def test_train_bad_arguments(tif_pair, tmp_path, capsys, extra, match):
    argv = ["train", "--image", str(tif_pair[0]), "--labels", str(tif_pair[1]), *TINY,
            "-o", str(tmp_path / "m.safetensors"), *extra]
    _one_line_error(capsys, 2, argv, match)
    assert not (tmp_path / "m.safetensors").exists()


def test_train_bad_files(tif_pair, tmp_path, capsys):
    out = ["-o", str(tmp_path / "m.safetensors")]
    _one_line_error(capsys, 2, ["train", "--image", str(tmp_path / "nope.tif"), "--labels", str(tif_pair[1]),
                                *TINY, *out], "does not exist")
    tifffile.imwrite(tmp_path / "float_labels.tif", tifffile.imread(tif_pair[1]) + 0.5)
    _one_line_error(capsys, 2, ["train", "--image", str(tif_pair[0]), "--labels",
                                str(tmp_path / "float_labels.tif"), *TINY, *out], "fractional")
    _one_line_error(capsys, 2, ["train", *TINY, *out], "give --image and --labels")


def test_train_parser_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--synthetic", "random", "--steps", "0", "-o", "m.safetensors"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "expected a positive number" in err.splitlines()[-1]


def test_console_script_bad_argument(tmp_path):
    script = Path(sys.executable).parent / "shiftseg"
    result = subprocess.run(
        [str(script), "train", "--synthetic", "random", "--levels", "3", "--window", "8",
         "-o", str(tmp_path / "m.safetensors")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "must be larger than f^l = 8" in result.stderr


def test_init_inherits_settings_it_is_not_told_to_change(tif_pair, tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    data = ["--image", str(tif_pair[0]), "--labels", str(tif_pair[1])]
    assert main(["train", *data, *TINY, "--no-tune", "--bandwidth", "1.7", "--min-size", "33",
                 "-o", str(first)]) == 0
    assert main(["train", *data, *RUN, "--no-tune", "--init", str(first), "-o", str(second)]) == 0
    meta = load_model(second).meta
    assert meta["bandwidth"] == 1.7 and meta["min_size"] == 33
    assert meta["initialised_from"]["model"] == "first.safetensors"
    # A setting given on the command line wins over the inherited one.
    third = tmp_path / "third.safetensors"
    assert main(["train", *data, *RUN, "--no-tune", "--init", str(first), "--min-size", "5",
                 "-o", str(third)]) == 0
    meta = load_model(third).meta
    assert meta["bandwidth"] == 1.7 and meta["min_size"] == 5


def test_network_options_with_init_are_refused(tif_pair, tmp_path, capsys):
    argv = ["train", "--image", str(tif_pair[0]), "--labels", str(tif_pair[1]), *TINY,
            "--init", "bundled", "-o", str(tmp_path / "m.safetensors")]
    _one_line_error(capsys, 2, argv, "give one or the other")


def test_default_continues_the_bundled_model_and_init_none_is_a_new_spatial_network(tif_pair, tmp_path):
    """Fine-tuning the bundled model beat a new network on each of three BBBC007 crops, in a
    third of the time: annotated images start from it, with the continued model's steps and rate."""
    from napari_shiftseg.network.modelio import load_bundled

    data = ["--image", str(tif_pair[0]), "--labels", str(tif_pair[1]), "--steps", "1",
            "--batch-size", "1", "--window", "36", "--quiet"]
    fresh, tuned = tmp_path / "fresh.safetensors", tmp_path / "tuned.safetensors"
    assert main(["train", *data, "--init", "none", "-o", str(fresh)]) == 0
    config = load_model(fresh).config
    assert config.embedding == "spatial" and config.embed_dim == 3 and config.base_channels == 16
    assert config.geometry.levels == 3 and "initialised_from" not in load_model(fresh).meta
    assert "--lr 0.001" in load_model(fresh).meta["command"]
    assert main(["train", *data, "-o", str(tuned)]) == 0
    model, bundled = load_model(tuned), load_bundled(2)
    assert model.config == bundled.config
    assert model.meta["initialised_from"]["model"] == bundled.name
    assert "--init bundled" in model.meta["command"] and "--lr 0.0003" in model.meta["command"]


def test_3d_default_fine_tunes_the_bundled_3d_model_and_none_asks_for_a_new_network(tmp_path):
    """A new 3D network took 5 s per step here (l = 3, 3000 steps: 4 hours): 3D volumes start
    from the bundled 3D model with the 3D batch, recorded in the model; a new one pools twice."""
    from napari_shiftseg.network.modelio import load_bundled

    image, labels = synth.nuclei((24, 48, 48), seed=5, radius=(5, 6))
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "vol_labels.tif", labels)
    data = ["--image", str(tmp_path / "vol.tif"), "--labels", str(tmp_path / "vol_labels.tif"),
            "--steps", "1", "--window", "12", "--no-tune", "--quiet"]
    assert main(["train", *data, "-o", str(tmp_path / "tuned.safetensors")]) == 0
    tuned, bundled = load_model(tmp_path / "tuned.safetensors"), load_bundled(3)
    assert tuned.config == bundled.config and tuned.meta["initialised_from"]["model"] == bundled.name
    command = tuned.meta["command"]
    assert "--init bundled" in command and "--batch-size 2" in command and "--lr 0.0003" in command
    assert main(["train", *data, "--init", "none", "--base-channels", "4",
                 "-o", str(tmp_path / "new.safetensors")]) == 0
    new = load_model(tmp_path / "new.safetensors")
    assert new.geometry.levels == 2 and new.config.base_channels == 4   # l = 2: the 3D default
    assert "initialised_from" not in new.meta and "--base-channels 4" in new.meta["command"]


def test_output_is_checked_before_training(tif_pair, tmp_path, capsys):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    argv = ["train", "--image", str(tif_pair[0]), "--labels", str(tif_pair[1]), *TINY, "-o", str(folder)]
    _one_line_error(capsys, 2, argv, "is a directory")
    assert not list(tmp_path.glob("*.tmp"))


def test_huge_window_is_refused_before_anything_is_generated(capsys, monkeypatch):
    from napari_shiftseg.cli import synth as cli_synth

    def no_generation(*args, **kwargs):
        raise AssertionError("an image was generated before the window was checked")

    monkeypatch.setattr(cli_synth, "generate", no_generation)
    _one_line_error(capsys, 2, ["train", "--synthetic", "random", "--window", "100000", "--quiet",
                                "--validation", "0", "-o", "never.safetensors"], "smaller --window")


def test_sparse_labels_from_the_cli(tif_pair, tmp_path, capsys):
    import tifffile

    labels = tifffile.imread(tif_pair[1])
    ids = np.unique(labels[labels > 0])
    sparse = np.where(np.isin(labels, ids[: len(ids) // 3]), labels, 0)
    tifffile.imwrite(tmp_path / "sparse.tif", sparse.astype(np.uint16))
    mask = np.zeros_like(labels, dtype=np.uint8)
    mask[:24] = 1
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    base = ["train", "--image", str(tif_pair[0]), "--labels", str(tmp_path / "sparse.tif"), *TINY]
    assert main([*base, "--sparse", "-o", str(tmp_path / "a.safetensors")]) == 0
    assert "painted objects plus a margin" in load_model(tmp_path / "a.safetensors").meta["training_data"]
    assert main([*base, "--mask", str(tmp_path / "mask.tif"), "-o", str(tmp_path / "b.safetensors")]) == 0
    assert "annotated-region mask" in load_model(tmp_path / "b.safetensors").meta["training_data"]
    capsys.readouterr()
    _one_line_error(capsys, 2, [*base, "--sparse", "--mask", str(tmp_path / "mask.tif"), "-o",
                                str(tmp_path / "c.safetensors")], "not both")


def test_no_tune_keeps_the_bandwidth_and_says_so(tmp_path, capsys):
    """--no-tune once still took the checkpoint scan's bandwidth and printed "settings tuned"."""
    assert main(["synth", "random", "--shape", "96,96", "--n-objects", "40", "--radius", "4",
                 "--noise", "0.05", "-o", str(tmp_path)]) == 0
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    data = ["--image", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"),
            "--validation", "0.3"]
    assert main(["train", *data, *TINY, "--no-tune", "--bandwidth", "1.7", "-o", str(first)]) == 0
    capsys.readouterr()
    assert main(["train", *data, *RUN[:-1], "--no-tune", "--init", str(first), "-o", str(second)]) == 0
    out = capsys.readouterr().out
    meta = load_model(second).meta
    assert "held-out" in out and "best_step" in meta["validation"]  # the checkpoint scan ran
    assert meta["bandwidth"] == 1.7
    assert "settings kept" in out and "settings tuned" not in out
    assert "tuned" not in meta["validation"]
