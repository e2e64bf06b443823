"""One tile plan per run: made once, passed down to predict and the diagnostics, and its
message (a snapped tile) reaches the user."""


import numpy as np
import pytest
from helpers import save_tiny

from napari_shiftseg.cli import main as cli_main
from napari_shiftseg.inference import predict, segment
from napari_shiftseg.network import tiling
from napari_shiftseg.network.modelio import load_model
from napari_shiftseg.util._errors import ShiftSegError


@pytest.fixture
def model(tmp_path):
    return load_model(save_tiny(tmp_path / "tiny.safetensors", ndim=2, levels=2))


@pytest.fixture
def count_plans(monkeypatch):
    """Counts tile_plan calls through every module that builds plans."""
    calls = []
    original = tiling.tile_plan

    def counting(shape, geometry, tile, mode="exact"):
        calls.append((tuple(shape), tile, mode))
        return original(shape, geometry, tile, mode)

    for module in (predict, segment):
        monkeypatch.setattr(module, "tile_plan", counting)
    return calls


def test_a_given_plan_is_used_and_checked(model):
    image = np.random.default_rng(0).random((50, 60), dtype=np.float32)
    plan = predict.predict_plan(image, model, 10)
    assert plan.tile == (12, 12) and "10" in plan.message and "12" in plan.message
    by_plan = predict.predict_embeddings(image, model, plan=plan, device="cpu").compute()
    by_tile = predict.predict_embeddings(image, model, tile=12, device="cpu").compute()
    np.testing.assert_array_equal(by_plan, by_tile)
    with pytest.raises(ShiftSegError, match="made for an image of shape"):
        predict.predict_embeddings(image[:40], model, plan=plan, device="cpu")
    with pytest.raises(TypeError, match="TilePlan"):
        predict.predict_embeddings(image, model, plan=(12, 12), device="cpu")


def test_segment_to_zarr_plans_once_and_records_the_note(tmp_path, model, count_plans):
    image = np.random.default_rng(1).random((48, 56), dtype=np.float32)
    group = segment.segment_to_zarr(image, tmp_path / "out.zarr", model=model, tile=10, device="cpu",
                                    bandwidth=1.0, min_size=1)
    assert len(count_plans) == 1, count_plans
    note = dict(group.attrs[segment.ATTRS])["tile_note"]
    assert "changed to" in note and "12" in note
    # The stored plan is the one the run used.
    again = segment.stored_plan(tmp_path / "out.zarr", model.geometry)
    assert again.tile == (12, 12) and again.image_shape == (48, 56)


def test_cli_says_when_the_tile_was_changed(tmp_path, capsys):
    import tifffile

    image = (np.random.default_rng(2).random((48, 56)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    path = save_tiny(tmp_path / "tiny.safetensors", ndim=2, levels=2)
    rc = cli_main(["segment", str(tmp_path / "img.tif"), "-m", str(path), "--tile", "10", "--device", "cpu",
                   "-o", str(tmp_path / "out.zarr"), "--quiet"])
    assert rc == 0
    assert "note: tile" in capsys.readouterr().out


def test_a_session_plans_the_run_once(model, count_plans, tmp_path):
    from napari_shiftseg.inference.session import Session
    from napari_shiftseg.network.settings import SegmentationSettings

    image = np.random.default_rng(3).random((40, 44), dtype=np.float32)
    result = Session(image, model, settings=SegmentationSettings(bandwidth=1.0, min_size=1), tile=10,
                     device="cpu").run()
    # The run's own plan once; the other one is the seams reference (an exact tiling with
    # other borders, made from the run's plan).
    runs = [c for c in count_plans if c[1] == 10]
    assert len(runs) == 1 and len(count_plans) == 2, count_plans
    assert "changed to" in result.note


def test_tile_auto_in_segment_to_zarr_and_the_cli(tmp_path, model, capsys):
    image = np.random.default_rng(4).random((48, 56), dtype=np.float32)
    group = segment.segment_to_zarr(image, tmp_path / "a.zarr", model=model, tile="auto", device="cpu",
                                    bandwidth=1.0, min_size=1)
    # The auto tile is recorded as the tile the run used (one tile covering this small image).
    assert dict(group.attrs[segment.ATTRS])["tiles"] == 1
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", (image * 255).astype(np.uint8))
    path = save_tiny(tmp_path / "t.safetensors", ndim=2, levels=2)
    assert cli_main(["segment", str(tmp_path / "img.tif"), "-m", str(path), "--tile", "auto", "--device", "cpu",
                     "-o", str(tmp_path / "b.zarr"), "--quiet"]) == 0
    assert "1 tiles" in capsys.readouterr().out


@pytest.mark.parametrize("side", [300, 200])
def test_a_session_measures_the_object_size_without_a_network_pass(model, tmp_path, monkeypatch, side):
    """'auto' object size: measured from the image (sizing.estimate_size), once; the network
    runs once, at the chosen scale, whatever the image's size."""
    from napari_shiftseg.imaging import sizing
    from napari_shiftseg.inference.session import Session
    from napari_shiftseg.network.modelio import load_model, save_model
    from napari_shiftseg.network.settings import SegmentationSettings

    model.meta["object_diameter"] = 12.0
    path = save_model(model, tmp_path / "sized.safetensors")
    calls = {"size": 0, "runs": 0}
    size, run = sizing.estimate_size, Session._resampled

    def counting_size(*a, **k):
        calls["size"] += 1
        return size(*a, **k)

    def counting_run(*a, **k):
        calls["runs"] += 1
        return run(*a, **k)

    monkeypatch.setattr(sizing, "estimate_size", counting_size)
    monkeypatch.setattr(Session, "_resampled", counting_run)
    image = np.random.default_rng(5).random((side, side), dtype=np.float32)
    Session(image, load_model(path), settings=SegmentationSettings(bandwidth=1.0, min_size=1), tile=64,
            device="cpu", diameter="auto").run()
    assert calls == {"size": 1, "runs": 1}
