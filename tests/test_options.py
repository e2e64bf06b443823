"""Option objects: they check their values once, keywords change one field (flat for nested
options), a typo is a TypeError, and the object form gives the same result as the keywords."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import save_standardized, tiny_net

from napari_shiftseg.inference.clustering import ClusterOptions
from napari_shiftseg.inference.meanshift import MeanShiftOptions, mean_shift
from napari_shiftseg.inference.predict import Reading, predict_embeddings
from napari_shiftseg.inference.segment import ATTRS, recluster, segment_to_zarr
from napari_shiftseg.inference.segment_options import SegmentOptions, settings_and_clustering
from napari_shiftseg.network.settings import SegmentationSettings
from napari_shiftseg.synthetic import synth
from napari_shiftseg.synthetic.synth import Distortion, NucleiScene
from napari_shiftseg.synthetic.synth_large import LatticeScene, jittered_lattice
from napari_shiftseg.training.train import train
from napari_shiftseg.training.train_options import LossSettings, TrainOptions
from napari_shiftseg.util._errors import ShiftSegError


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": 0}, "steps must be positive"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of"),
    ({"validation": 1.0}, "fraction held out, below 1"),
    ({"noise_std": -0.1}, "noise_std must be >= 0"),
    ({"batch_size": 0}, "batch_size must be positive"),
])
def test_train_options_refuse_impossible_values(changes, message):
    with pytest.raises(ShiftSegError, match=message):
        TrainOptions(**changes)
    with pytest.raises(ShiftSegError, match="delta_d"):
        LossSettings(delta_d=0)
    with pytest.raises(TypeError, match="steps must be a number"):
        TrainOptions(steps="many")


def test_overrides_change_one_field_and_reach_nested_options():
    base = TrainOptions(steps=10, lr=1e-3)
    changed = base.with_overrides(steps=20, delta_d=2.0)
    assert (changed.steps, changed.lr, changed.loss.delta_d) == (20, 1e-3, 2.0)
    assert base.steps == 10 and base.loss.delta_d == 3.0  # frozen: the original is untouched
    with pytest.raises(TypeError, match="stepz"):
        base.with_overrides(stepz=3)
    segment = SegmentOptions().with_overrides(seed=3, tile=64)
    assert segment.clustering.seed == 3 and segment.tile == 64
    with pytest.raises(TypeError, match="segment_to_zarr.*tiles"):
        SegmentOptions().with_overrides(tiles=64)
    with pytest.raises(ShiftSegError, match="n_seeds"):
        ClusterOptions(n_seeds=0)
    with pytest.raises(ShiftSegError, match="kernel"):
        MeanShiftOptions(kernel="box")


def test_training_defaults_have_one_torch_free_owner():
    """``shiftseg train`` and the Train widget read their defaults from train_options, which
    loads no torch (the CLI builds its parser from it); the segmentation settings no longer
    carry them."""
    import subprocess
    import sys

    code = ("import sys; from napari_shiftseg.training import train_options, train_setup; "
            "from napari_shiftseg.network import settings; "
            "assert train_options.TRAINING_DEFAULTS and not hasattr(settings, 'TRAINING_DEFAULTS'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    new, continued = TrainOptions.recommended(2, False), TrainOptions.recommended(3, True, steps=7)
    assert (new.steps, new.lr, new.lr_schedule, new.batch_size, new.validation) == (3000, 1e-3, "cosine", 4, 0.25)
    assert (continued.steps, continued.lr, continued.batch_size) == (7, 3e-4, 2)


def test_settings_and_clustering_split_keywords_between_their_owners():
    settings, clustering = settings_and_clustering(None, None, {"bandwidth": 1.5, "seed": 4,
                                                                "merge_distance": None}, "f")
    assert settings.bandwidth == 1.5 and settings.merge_distance == 0.0 and clustering.seed == 4
    with pytest.raises(TypeError, match="bandwith"):
        settings_and_clustering(None, None, {"bandwith": 1.0}, "f")


def test_segment_options_take_the_model_settings_unless_given():
    net = tiny_net()
    model_settings = {"bandwidth": 1.25, "min_size": 7, "fg_threshold": 0.6}
    from napari_shiftseg.network.modelio import Model

    model = Model(net, model_settings)
    assert SegmentOptions().settings_for(model).bandwidth == 1.25
    chosen = SegmentOptions(bandwidth=2.0, min_size=None).settings_for(model)
    assert (chosen.bandwidth, chosen.min_size, chosen.fg_threshold) == (2.0, 7, 0.6)


def test_train_with_options_equals_train_with_keywords():
    image, labels = synth.random_objects((40, 40), n_objects=6, radius=4, seed=3)
    config = tiny_net().config
    options = TrainOptions(steps=3, seed=5, output_window=24)
    a, _ = train(image, labels, config, options)
    b, _ = train(image, labels, config, steps=3, seed=5, output_window=24)
    c, _ = train(image, labels, config, options, steps=4)  # a keyword wins over the object
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        assert np.array_equal(pa.detach().numpy(), pb.detach().numpy())
    assert a.meta["steps"] == 3 and c.meta["steps"] == 4
    assert a.meta["loss"] == LossSettings().to_meta() and a.meta["lr"] == options.lr


def test_segment_and_recluster_with_objects_equal_keywords(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.05, (48, 48)).astype(np.float32)
    image[10:18, 10:18] += 1
    image[30:38, 28:36] += 1
    path = save_standardized(tmp_path / "m.safetensors", image)
    by_object = segment_to_zarr(image, tmp_path / "a.zarr", path,
                                SegmentOptions(tile=16, device="cpu", bandwidth=1.0, min_size=2,
                                               clustering=ClusterOptions(n_seeds=50, seed=2)))
    by_keywords = segment_to_zarr(image, tmp_path / "b.zarr", path, tile=16, device="cpu",
                                  bandwidth=1.0, min_size=2, n_seeds=50, seed=2)
    labels = "labels/instances/0"
    np.testing.assert_array_equal(by_object[labels][...], by_keywords[labels][...])
    assert by_object.attrs[ATTRS]["cluster_args"] == by_keywords.attrs[ATTRS]["cluster_args"]
    assert by_object.attrs[ATTRS]["cluster_args"]["n_seeds"] == 50
    again = recluster(tmp_path / "a.zarr", SegmentationSettings(bandwidth=0.8, min_size=2),
                      ClusterOptions(n_seeds=50))
    assert again.attrs[ATTRS]["cluster_args"]["bandwidth"] == 0.8
    again = recluster(tmp_path / "a.zarr", bandwidth=0.9, min_size=2, n_seeds=40)
    assert again.attrs[ATTRS]["cluster_args"]["n_seeds"] == 40


def test_typed_settings_pass_through_unchanged(tmp_path):
    """Switched-off post-processing stays off in a run (issue 26: the Segment widget's Run on an
    over-budget image used to get the model's merge_distance, absorb_small and fill_holes back
    because "off" travelled as a missing keyword), and Run and Re-cluster agree."""
    from napari_shiftseg.network.modelio import load_model, save_model

    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.05, (48, 48)).astype(np.float32)
    image[10:18, 10:18] += 1
    image[30:38, 28:36] += 1
    path = save_standardized(tmp_path / "m.safetensors", image)
    model = load_model(path)
    save_model(model, path, {"merge_distance": 1.5, "absorb_small": True, "fill_holes": True, "min_size": 3})
    recorded = segment_to_zarr(image, tmp_path / "model.zarr", path, tile=16, device="cpu")
    assert recorded.attrs[ATTRS]["cluster_args"]["merge_distance"] == 1.5  # the model's, untouched
    off = SegmentationSettings(bandwidth=1.0, min_size=2)  # post-processing off
    run = segment_to_zarr(image, tmp_path / "run.zarr", path, SegmentOptions(tile=16, device="cpu", settings=off))
    args = run.attrs[ATTRS]["cluster_args"]
    recorded = (args["merge_distance"], args["absorb_small"], args["fill_holes"], args["min_size"])
    assert recorded == (0.0, False, False, 2)
    labels = np.asarray(run["labels/instances/0"])
    again = recluster(tmp_path / "run.zarr", off)
    np.testing.assert_array_equal(np.asarray(again["labels/instances/0"]), labels)
    # A single flag still changes one setting on top of the typed ones.
    flagged = SegmentOptions(settings=off, min_size=5).settings_for(model)
    assert (flagged.min_size, flagged.bandwidth, flagged.merge_distance) == (5, 1.0, 0.0)
    with pytest.raises(TypeError, match="SegmentationSettings"):
        SegmentOptions(settings={"bandwidth": 1.0})


def test_generators_and_reading_take_objects_or_keywords():
    a = synth.nuclei((48, 48), seed=2, scene=NucleiScene(radius=(4, 6), photons=80))
    b = synth.nuclei((48, 48), seed=2, radius=(4, 6), photons=80)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    noisy = synth.lattice((40, 40), 15, seed=1, distortion=Distortion(noise_std=0.1))
    assert np.array_equal(noisy[0], synth.lattice((40, 40), 15, seed=1, noise_std=0.1)[0])
    assert not np.array_equal(noisy[0], synth.lattice((40, 40), 15, seed=1)[0])
    lazy = jittered_lattice((32, 32), 16, seed=1, scene=LatticeScene(spacing=14, radius=4))[1].compute()
    assert np.array_equal(lazy, jittered_lattice((32, 32), 16, seed=1, spacing=14, radius=4)[1].compute())
    net = tiny_net()
    image = np.random.default_rng(1).random((40, 40), dtype=np.float32)
    plain = predict_embeddings(image, net, tile=16, device="cpu", reading=Reading(normalization=False))
    assert np.array_equal(plain.compute(), predict_embeddings(image, net, tile=16, device="cpu",
                                                              normalization=False).compute())
    with pytest.raises(TypeError, match="normalisation"):
        predict_embeddings(image, net, tile=16, device="cpu", normalisation=False)
    points = np.random.default_rng(2).normal(0, 0.3, (200, 2)).astype(np.float32)
    assert np.array_equal(mean_shift(points, 1.0, options=MeanShiftOptions(kernel="gaussian")),
                          mean_shift(points, 1.0, kernel="gaussian"))
