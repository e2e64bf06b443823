"""One session: Run, Preview and Re-cluster give the same labels for the same settings, in
memory and on disk; evaluate segments as a run does; split / merge / undo (issue 26).

A :class:`Session` runs in memory or, for an image over the memory budget, to zarr
(``segment_to_zarr``). Each can be run again from its stored embeddings (Re-cluster). Before
the settings travelled typed, switching post-processing off in the widget was ignored by the
on-disk Run (the model's merge_distance, absorb_small and fill_holes came back) but respected
by Re-cluster. No Qt here.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import save_standardized

from napari_shiftseg.inference.segment_options import SegmentOptions
from napari_shiftseg.inference.session import WHOLE, Session
from napari_shiftseg.network.modelio import load_model, save_model
from napari_shiftseg.network.settings import SegmentationSettings
from napari_shiftseg.util._errors import ShiftSegError


def _canonical(labels) -> np.ndarray:
    """Labels renumbered by first appearance: equal partitions give equal arrays."""
    labels = np.asarray(labels)
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[np.argsort(first)]
    order = order[order != 0]
    table = np.zeros(int(ids.max()) + 1, np.int64)
    table[order] = np.arange(1, order.size + 1)
    return table[flat].reshape(labels.shape)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agree")
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.05, (48, 48)).astype(np.float32)
    for y, x in ((6, 6), (6, 30), (28, 10), (30, 32)):
        image[y:y + 9, x:x + 9] += 1
    path = save_standardized(tmp / "m.safetensors", image)
    # The model records post-processing switched on: a run must not fall back to it.
    save_model(load_model(path), path, {"merge_distance": 1.5, "absorb_small": True, "fill_holes": True,
                                        "min_size": 3})
    return image, path, tmp


@pytest.mark.parametrize("settings", [
    SegmentationSettings(bandwidth=1.0, min_size=2),  # post-processing off
    SegmentationSettings(bandwidth=1.0, min_size=2, merge_distance=1.0, fill_holes=True),
], ids=["post-off", "post-on"])
def test_run_preview_and_recluster_agree_in_memory_and_on_disk(case, settings, tmp_path):
    image, path, _ = case
    model = load_model(path)
    options = SegmentOptions(settings=settings, tile=16, device="cpu")
    run = Session(image, model, options).run()
    whole = tuple(slice(0, n) for n in image.shape)
    preview = Session(image, model, options).preview(whole)
    session = Session(image, model, options)
    session.run()
    again, _ = session.recluster()
    disk = Session(image, model, options)
    disk.run_to_zarr(tmp_path / "big.zarr")
    on_disk = disk.open_result(tmp_path / "big.zarr").labels.compute()
    disk_again, _ = disk.recluster()
    evaluated = Session(image, model, options.with_overrides(tile=WHOLE)).run(maps=False)

    reference = _canonical(run.labels)
    assert reference.max() >= 2  # objects to agree on
    assert evaluated.diagnostics == {} and evaluated.clusters is None  # no maps asked for
    for name, labels in (("preview", preview.labels), ("re-cluster", again), ("whole image", evaluated.labels),
                         ("on-disk run", on_disk), ("on-disk re-cluster", disk_again.compute())):
        np.testing.assert_array_equal(_canonical(labels), reference, err_msg=name)
    import zarr

    recorded = dict(zarr.open_group(str(tmp_path / "big.zarr"), mode="r").attrs["shiftseg"])["cluster_args"]
    assert recorded["merge_distance"] == settings.merge_distance
    assert recorded["absorb_small"] is settings.absorb_small
    assert recorded["fill_holes"] is settings.fill_holes


def test_a_preview_resamples_by_the_factor_of_run(tmp_path):
    """Preview measures the object size on the whole image, as Run does: measured on the
    previewed slab it could resample by another factor (x1.84 against x1.46 on a crop of the
    spheres sample) and give other objects than Run there."""
    from napari_shiftseg.imaging import rescale

    rng = np.random.default_rng(1)
    image = rng.normal(0, 0.05, (24, 48, 48)).astype(np.float32)
    for z, y, x in ((4, 6, 6), (4, 26, 30), (14, 8, 28), (14, 30, 8), (18, 30, 32)):
        zz, yy, xx = np.ogrid[:24, :48, :48]
        image[(zz - z - 3) ** 2 + (yy - y - 5) ** 2 + (xx - x - 5) ** 2 <= 16] += 1.0
    path = save_standardized(tmp_path / "m3.safetensors", image, ndim=3)
    save_model(load_model(path), path, {"object_diameter": 14.0, "min_size": 2})
    options = SegmentOptions(settings=SegmentationSettings(bandwidth=1.0, min_size=2), tile=16,
                             device="cpu", diameter="auto")
    model = load_model(path)
    whole = rescale.plan_resampling(image, model, "auto").factor
    slab = (slice(4, 8), slice(0, 48), slice(0, 48))
    assert rescale.plan_resampling(image[slab], model, "auto").factor != whole  # the slab alone differs
    session = Session(image, model, options)
    run, preview = session.run(), session.preview(slab)
    factors = [r.resampled.factor if r.resampled else 1.0 for r in (run, preview)]
    # A 3D model checks the whole image's estimate on the image's central crop (size_check).
    from napari_shiftseg.inference import size_check

    checked = rescale.plan_resampling(image, model, "auto", refine=size_check.refiner(image, model, options)).factor
    assert factors[0] == pytest.approx(factors[1]) and factors[0] == pytest.approx(checked, rel=0.02)


def test_evaluate_segments_as_a_session_run(case):
    """``shiftseg evaluate`` (segment_array) is a session run with one tile covering the image:
    the same labels as a tiled run of the same settings (the tiles are exact)."""
    from napari_shiftseg.inference.evaluate import segment_array

    image, path, _ = case
    model = load_model(path)
    settings = SegmentationSettings(bandwidth=1.0, min_size=2)
    tiled = Session(image, model, SegmentOptions(settings=settings, tile=16, device="cpu")).run()
    np.testing.assert_array_equal(_canonical(segment_array(image, model, settings, diameter=None)),
                                  _canonical(tiled.labels))


def test_split_merge_and_undo_go_through_the_session(case):
    image, path, _ = case
    session = Session(image, load_model(path), tile=16, device="cpu",
                      settings=SegmentationSettings(bandwidth=1.0, min_size=2))
    with pytest.raises(ShiftSegError, match="run or preview first"):
        session.merge([1, 2])
    first = session.run().labels.copy()
    ids = [i for i in np.unique(first) if i]
    merged, kept = session.merge(ids[:2])
    assert kept == min(ids[:2]) and len(np.unique(merged)) == len(np.unique(first)) - 1
    assert session.result.labels is merged and len(session.history) == 1
    indices, values = session.undo()
    np.testing.assert_array_equal(session.result.labels, first)  # the edit taken back
    assert len(indices) == first.ndim and values.dtype == first.dtype
    with pytest.raises(ShiftSegError, match="nothing to undo"):
        session.undo()
    hand_edited = first.copy()
    hand_edited[0, 0] = 0
    session.merge(ids[:2], labels=hand_edited)  # the user's edits are kept
    session.recluster()                         # new labels: a new history
    assert len(session.history) == 0
    table = session.measurements()
    assert list(table["index"]) == [i for i in np.unique(session.result.labels) if i]


def test_a_cancelled_run_keeps_the_session_as_it_was(case):
    from napari_shiftseg.util.progress import Cancelled

    image, path, _ = case
    session = Session(image, load_model(path), tile=16, device="cpu")
    done = session.run()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        session.run(cancel=cancel)
    assert session.result is done


def test_a_resampled_run_in_memory_equals_the_run_to_zarr(case, tmp_path):
    """On an image resampled to the model's object size, the in-memory run (widget) and the
    zarr run (CLI) normalise the same image, the one the network sees (as training does):
    the widget used to take the statistics of the image before resampling, so its embeddings
    differed from the CLI's on the same image and settings."""
    image, path, _ = case
    model = load_model(path)
    model.meta["object_diameter"] = 14.0
    options = SegmentOptions(settings=SegmentationSettings(bandwidth=1.0, min_size=2), tile=16, device="cpu",
                             diameter=9.0)
    memory = Session(image, model, options).run()
    disk = Session(image, model, options)
    disk.run_to_zarr(tmp_path / "r.zarr")
    stored = disk.open_result(tmp_path / "r.zarr")
    assert memory.resampled is not None and stored.resampled is not None
    np.testing.assert_allclose(memory.embeddings, stored.embeddings.compute(), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(_canonical(memory.labels), _canonical(stored.labels.compute()))


def test_a_large_foreground_finds_its_modes_blockwise_in_memory_and_on_disk(tmp_path):
    """A spatial head's embeddings carry positions: above max_points / density foreground
    voxels the session (and the zarr run, which records the position scale) finds the modes
    cube by cube in embedding space (issue 27), with the objects the global path finds."""
    from napari_shiftseg.imaging import metrics
    from napari_shiftseg.network.modelio import load_bundled
    from napari_shiftseg.synthetic import synth

    model = load_bundled(2)
    image, truth = synth.nuclei((192, 192), seed=5)
    base = SegmentOptions(device="cpu", tile=64)
    whole = Session(image, model, base).run(maps=False).labels
    forced = base.with_overrides(max_points=200)   # blockwise above ~6,700 foreground voxels
    memory = Session(image, model, forced).run(maps=False).labels
    group = Session(image, model, forced).run_to_zarr(tmp_path / "b.zarr")
    info = dict(group.attrs["shiftseg"])
    assert info["positions"] == list(model.config.positions) and info["clustering"]["blocks"] >= 2
    np.testing.assert_array_equal(_canonical(memory), _canonical(np.asarray(group["labels/instances/0"])))
    ap_whole = metrics.evaluate(truth, whole)["ap@0.5"]
    assert metrics.evaluate(truth, memory)["ap@0.5"] >= ap_whole - 0.05 and ap_whole > 0.5
