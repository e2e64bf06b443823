"""The bundled models: they load, have the documented geometry, and segment fresh images
(seeds never used in training or in docs/MODELS.md) well.

Two kinds ship: the default nuclei models and the paper's disk/sphere models (kept for the
demonstrations). Bars are below the AP@0.5 measured in docs/MODELS.md to leave room for a
single small image.
"""

import numpy as np
import pytest

from napari_shiftseg.imaging import metrics
from napari_shiftseg.inference.evaluate import segment_array
from napari_shiftseg.network.modelio import bundled_model_path, load_bundled
from napari_shiftseg.synthetic import synth

#: Measured when the models were made: 2D 1.00 (70 disks), 3D 0.84 (49 spheres; seeds 322-324
#: gave 0.98, 0.91, 1.00 - 321 is the worst of the four and is the one tested).
AP_BAR = {2: 0.85, 3: 0.75}


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def model(request):
    return load_bundled(request.param, kind="disks")


def test_files_are_small():
    for kind in ("nuclei", "disks"):
        for ndim in (2, 3):
            assert bundled_model_path(ndim, kind).stat().st_size < 2_000_000


def test_unknown_kind_is_refused():
    from napari_shiftseg.util._errors import ShiftSegError

    with pytest.raises(ShiftSegError, match="no bundled 'cells' model"):
        bundled_model_path(2, "cells")


def test_geometry_and_metadata(model):
    g = model.geometry
    assert g.factor == 2 and g.padding == "valid"
    assert (g.ndim, g.levels) in ((2, 3), (3, 2))
    assert model.config.upsampling == "learnt" and model.config.embed_dim == 3
    assert model.config.foreground_head
    meta = model.meta
    assert meta["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert len(meta["training_window"]) == g.ndim and min(meta["training_window"]) > g.grid
    assert meta["command"].startswith("shiftseg train --synthetic random")
    assert meta["metrics"]["ap@0.5"] >= 0.75
    assert {"bandwidth", "min_size"} <= set(meta)


def test_segments_a_fresh_synthetic_image(model):
    ndim = model.geometry.ndim
    if ndim == 2:
        image, gt = synth.random_objects((192, 192), density=0.15, noise_std=0.1, elastic_alpha=1.0, seed=123)
    else:
        image, gt = synth.random_objects((40, 80, 80), density=0.1, noise_std=0.1, seed=321)
    pred = segment_array(image, model)
    result = metrics.evaluate(gt, pred)
    assert result["ap@0.5"] >= AP_BAR[ndim], result


def test_2d_model_on_the_lattice_sample():
    """The committed 2D lattice sample (spacing 15, never seen in training)."""
    from pathlib import Path

    import tifffile

    root = Path(__file__).resolve().parents[1] / "sample_data" / "lattice_2d"
    image, gt = tifffile.imread(root / "image.tif"), tifffile.imread(root / "labels.tif")
    pred = segment_array(image[:128, :128], load_bundled(2, kind="disks"))
    result = metrics.evaluate(gt[:128, :128], pred)
    assert result["ap@0.5"] >= 0.9, result  # 0.99 when the model was made
    assert np.unique(pred).size > 50


#: The benchmark's synthetic test sets (benchmarks/bench_real.py; never trained or tuned on).
#: Measured with the re-seeding mean-shift (eighth session): 2D 0.910 vs 0.246 for Otsu +
#: watershed (with the object-size resampling segment_array does by default), 3D 0.963 vs 0.226
#: (mean AP@0.5; 0.785 with random seeds only, 0.368 before the 3D model was retrained at a fixed
#: object scale). The bars are issue 8's (0.85): they fail if the shipped files or the
#: clustering regress below what the issue asks.
NUCLEI_SETS = {2: ((256, 256), 8), 3: ((64, 128, 128), 3)}
NUCLEI_BAR = {2: 0.85, 3: 0.85}


@pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
def test_default_nuclei_model_beats_the_classical_baseline(ndim):
    from napari_shiftseg.imaging.classical import otsu_watershed

    model = load_bundled(ndim)
    assert model.config.embedding == "spatial" and model.config.foreground_head
    assert "tuned" in model.meta["validation"]
    shape, n = NUCLEI_SETS[ndim]
    ours, baseline = [], []
    for seed in synth.TEST_SEEDS[:n]:
        image, gt = synth.nuclei(shape, seed=seed)
        ours.append(metrics.evaluate(gt, segment_array(image, model))["ap@0.5"])
        baseline.append(metrics.evaluate(gt, otsu_watershed(image))["ap@0.5"])
    assert np.mean(ours) >= NUCLEI_BAR[ndim] and np.mean(ours) > np.mean(baseline) + 0.05, (ours, baseline)


@pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
def test_shipped_nuclei_weights_tile_exactly(ndim):
    """Stitched == whole for the weights that ship (retrained weights must keep it): tiles of
    one grid step (the most seams) against one whole-image pass, on a realistic stack."""
    from napari_shiftseg.inference.predict import predict_embeddings, predict_whole
    from napari_shiftseg.synthetic import synth_stacks

    model = load_bundled(ndim)
    image = synth_stacks.microscope_stack(10.0, 1.0, 7, extent=(2.0, 4.0, 4.0)).image
    image = image[:, :36, :36] if ndim == 3 else image[image.shape[0] // 2, :40, :40]
    image = (image - image.mean()) / image.std()
    whole = predict_whole(image, model, device="cpu")
    tiled = predict_embeddings(image, model, tile=model.geometry.grid, device="cpu").compute(scheduler="sync")
    assert tiled.shape == whole.shape and np.abs(whole).max() > 0
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max()
