"""Reproduction experiments on tiny settings: capacity, tile-size sweep, window study."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import save_tiny, tiny_net  # noqa: E402

from napari_shiftseg.cli import main
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import Model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.reproduce import capacity, window_study
from napari_shiftseg.reproduce.sweep import parse_tiles, run_sweep
from napari_shiftseg.synthetic.synth import random_objects
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)


# ---- capacity ----------------------------------------------------------------------------------
def test_lattice_setup_matches_the_paper():
    g = UNetGeometry(ndim=2, levels=3)
    image, labels, centres = capacity.lattice_setup(g, 15)
    assert image.shape == (220, 220) and labels.shape == (132, 132)
    assert len(centres) == 81 and len({tuple(c) for c in centres % 8}) == 64
    _, _, centres16 = capacity.lattice_setup(g, 16)
    assert len({tuple(c) for c in centres16 % 8}) == 1
    # every listed centre is a disk's centre pixel in the output window
    assert (labels[tuple(centres.T)] > 0).all()


def test_capacity_spacing_16_vs_15_trained(tmp_path):
    cases = [capacity.CapacityCase(16, 2, window=48), capacity.CapacityCase(15, 2, window=48)]
    s16, s15 = capacity.run_capacity(cases, steps=60, lr=3e-3, base_channels=8)
    assert (s16.phases, s16.clusters) == (1, 1)  # f^l-periodic: one embedding, always
    assert s15.phases == s15.capacity == 16
    assert s15.clusters > 1
    text = capacity.format_table([s16, s15])
    assert "spacing 15" in text and "spacing 16" in text
    from napari_shiftseg.reproduce.figures import capacity_figure

    assert capacity_figure([s16, s15], tmp_path / "c.png").stat().st_size > 1000


def test_capacity_spacing_16_is_one_cluster_for_any_weights():
    for seed in range(2):
        model = Model(tiny_net(levels=2, base=4, seed=seed), {})
        assert capacity.measure_capacity(model, 16, keep_arrays=False, output_window=32)["clusters"] == 1


def test_capacity_cli_with_a_given_model(tmp_path, capsys):
    path = save_tiny(tmp_path / "m.safetensors", levels=2)
    out = tmp_path / "cap"
    assert main(["capacity", "-m", str(path), "--spacings", "16,15", "-o", str(out)]) == 0
    with (out / "capacity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["spacing"]) for r in rows] == [16, 15]
    assert int(rows[0]["clusters"]) == 1 and int(rows[1]["phases"]) == 16
    assert (out / "capacity.png").is_file() and (out / "capacity.json").is_file()
    assert "clusters" in capsys.readouterr().out


# ---- sweep -------------------------------------------------------------------------------------
def test_parse_tiles():
    assert parse_tiles("112:148") == list(range(112, 149))
    assert parse_tiles("112:148:4") == list(range(112, 149, 4))
    assert parse_tiles("96, 128,96") == [96, 128]
    for bad in ("a:b", "10:5", "0:4", "1:2:3:4", "", "4:8:0"):
        with pytest.raises(ShiftSegError):
            parse_tiles(bad)


@pytest.fixture(scope="module")
def sample():
    return random_objects((48, 48), density=0.3, radius=4, seed=3)


def test_sweep_exact_is_whole_image_for_every_size(sample):
    model = Model(tiny_net(levels=2), {})  # f^l = 4
    tiles = [5, 6, 8, 10, 12]
    result = run_sweep(*sample, model, tiles, mode="exact")
    rows = result["rows"]
    assert [r["tile"] for r in rows] == tiles and result["grid"] == 4
    assert all(r["tile_used"] % 4 == 0 for r in rows)
    assert all(r["rel_diff"] <= 1e-5 for r in rows), [r["rel_diff"] for r in rows]
    naive = run_sweep(*sample, model, [6, 8, 10, 12], mode="naive")["rows"]
    on, off = [r for r in naive if r["on_grid"]], [r for r in naive if not r["on_grid"]]
    assert [r["tile"] for r in on] == [8, 12] and all(r["rel_diff"] <= 1e-5 for r in on)
    assert all(r["rel_diff"] > 1e-3 for r in off)


def test_sweep_cli_writes_one_row_per_tile(tmp_path, sample, capsys):
    image, labels = sample
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    model = save_tiny(tmp_path / "m.safetensors", levels=2)
    out = tmp_path / "sweep"
    argv = ["sweep", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "-m",
            str(model), "--tiles", "6:12:2", "--mode", "both", "-o", str(out)]
    assert main(argv) == 0
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], int(r["tile"])) for r in rows] == [
        (m, t) for m in ("naive", "exact") for t in (6, 8, 10, 12)]
    assert all(float(r["rel_diff"]) <= 1e-5 for r in rows if r["mode"] == "exact")
    assert (out / "sweep.png").stat().st_size > 1000
    assert "false splits" in capsys.readouterr().out


def test_sweep_refuses_bad_inputs(sample):
    image, labels = sample
    model = Model(tiny_net(levels=2), {})
    with pytest.raises(ShiftSegError, match="same shape|differ"):
        run_sweep(image, labels[:40], model, [8])
    with pytest.raises(ShiftSegError, match="mode"):
        run_sweep(image, labels, model, [8], mode="blend")
    with pytest.raises(ShiftSegError, match="3D"):
        run_sweep(image[None].repeat(8, 0), labels[None].repeat(8, 0), model, [8])
    assert main(["sweep", "missing.npy", "--labels", "x.npy", "--tiles", "8"]) == 2


# ---- window study ------------------------------------------------------------------------------
def test_cell_start_follows_the_geometry():
    assert window_study.cell_start(UNetGeometry(levels=3)) == 0
    assert window_study.cell_start(UNetGeometry(levels=4)) == 0
    assert window_study.cell_start(UNetGeometry(levels=2)) == 2
    assert window_study.cell_start(UNetGeometry(levels=3, padding="same")) == 0


def max_cell_net(levels: int) -> UNet:
    """The paper's Lemma 1 construction: identity convs, no skips, upsampling by copying, so
    every output pixel is the max of the input over its bottom-level cell."""
    g = UNetGeometry(levels=levels)
    net = UNet(UNetConfig(geometry=g, base_channels=1, channel_growth=1, foreground_head=False,
                          embed_dim=1)).eval()
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.zero_()
                m.bias.zero_()
                if isinstance(m, torch.nn.ConvTranspose2d) or name == "head":
                    m.weight.fill_(1.0)
                else:  # 3x3 identity on the last input channel (the upsampled one in up blocks)
                    m.weight[0, -1, 1, 1] = 1.0
    return net


@pytest.mark.parametrize("levels", [2, 3])
def test_cell_start_is_where_the_network_output_changes(levels):
    from napari_shiftseg.inference.predict import predict_whole

    net = max_cell_net(levels)
    g = net.config.geometry
    image = np.random.default_rng(levels).uniform(0.1, 1.0, (5 * g.grid + 3,) * 2).astype(np.float32)
    out = predict_whole(image, net, device="cpu", normalization=False)[0]
    changes = np.flatnonzero((np.diff(out, axis=1) != 0).any(axis=0)) + 1
    assert len(changes) >= 4
    assert set((changes - window_study.cell_start(g)) % g.grid) == {0}


def test_tile_jump_and_phase_jumps_on_synthetic_embeddings():
    g = UNetGeometry(levels=2)  # f^l = 4, cells start at 2
    gt = np.ones((16, 16), np.int32)
    emb = np.zeros((3, 16, 16), np.float32)
    emb[0, 8:] = 1.0  # one jump, between rows 7 and 8: boundary (8 - 2) % 4 = 2
    emb += np.random.default_rng(0).normal(0, 0.01, emb.shape).astype(np.float32)
    jumps = window_study.phase_jumps(emb, gt, g)
    assert np.argmax(jumps) == 2
    assert window_study.tile_jump(emb, gt, 8) > 10


def test_sweep_3d():
    image, labels = random_objects((12, 24, 24), density=0.1, radius=3, radius_jitter=0.5, seed=1)
    model = Model(tiny_net(ndim=3, levels=1), {})  # f^l = 2
    rows = run_sweep(image, labels, model, [3, 4], mode="naive")["rows"]
    assert [r["on_grid"] for r in rows] == [False, True]
    assert rows[1]["rel_diff"] <= 1e-5 < rows[0]["rel_diff"]


# Models trained by `shiftseg window-study --quick` (seed 0), stored as float16 (loaded as
# float32); the full run is the documented benchmark (docs/REPRODUCTION.md).
WINDOW_MODELS = "tests/data/window_study/window_{}.safetensors"


@pytest.fixture(scope="module")
def window_results():
    from pathlib import Path

    from napari_shiftseg.network.modelio import load_model

    root = Path(__file__).parent / "data" / "window_study"
    image, gt = window_study.test_data((128, 128), seed=1000)
    return {name: window_study.evaluate_case(load_model(root / f"window_{name}.safetensors"),
                                             image, gt, 64, keep_arrays=False)
            for name in ("4_valid", "8_valid", "16_valid", "32_same")}


def test_window_study_ordering_on_committed_models(window_results):
    small, equal, large, same = (window_results[k] for k in ("4_valid", "8_valid", "16_valid", "32_same"))
    # < f^l (window 4 trains phases 6, 7, 0, 1): jumps where trained meet untrained phases
    assert small["worst_boundary"] in (2, 6) and small["phase_jump"] > 1.5 > small["grid_jump"]
    # = f^l: u_7 and u_0 never trained side by side -> the jump sits on the f^l grid line
    assert equal["worst_boundary"] == 0 and equal["grid_jump"] > 4
    assert equal["false_splits"] > 10
    # > f^l: fewer grid jumps and false splits than = f^l
    assert large["grid_jump"] < equal["grid_jump"] and large["false_splits"] < equal["false_splits"]
    # valid padding: stitched == whole; same padding: seams at tile borders, stitched != whole
    assert all(r["rel_diff"] <= 1e-5 for r in (small, equal, large))
    assert same["tile_jump"] > 10 and same["rel_diff"] > 0.01
    assert same["false_splits"] > same["whole_false_splits"]


def test_window_study_cli_runs(tmp_path, capsys):
    out = tmp_path / "ws"
    ref = WINDOW_MODELS.format("16_valid")
    from pathlib import Path

    ref = str(Path(__file__).parent.parent / ref)
    assert main(["window-study", "--levels", "2", "--steps", "1", "--reference", ref, "-o", str(out)]) == 0
    with (out / "window_study.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["window"] for r in rows] == ["2", "4", "8", "16", "16"]
    assert len(list((out / "models").glob("*.safetensors"))) == 4
    assert (out / "window_study.png").stat().st_size > 5000
    assert "grid jump" in capsys.readouterr().out


def test_sweep_plot_counts_start_at_zero():
    """All-zero false splits (exact tiling) must not give a -0.04..0.04 count axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_shiftseg.reproduce.figures import sweep_axes

    fig, ax = plt.subplots()
    rows = [{"tile": t, "false_splits": 0, "ap50": 0.9} for t in (16, 20, 24)]
    sweep_axes(ax, rows, grid=8)
    assert ax.get_ylim() == (0.0, 1.0)
    ax.clear()
    sweep_axes(ax, [{**r, "false_splits": 10 * i} for i, r in enumerate(rows)], grid=8)
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 20
    plt.close(fig)
