"""The image's size estimate checked by the model on a central crop (inference.size_check)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_shiftseg.imaging import rescale
from napari_shiftseg.inference import size_check
from napari_shiftseg.inference.segment_options import SegmentOptions
from napari_shiftseg.network.modelio import load_bundled
from napari_shiftseg.synthetic import synth_stacks


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 3000)] * 3),
       factors=st.tuples(*[st.floats(0.1, 3.0)] * 3),
       limit=st.integers(1, 10**7))
def test_the_crop_is_central_inside_and_within_the_limit(shape, factors, limit):
    region = size_check.crop_region(shape, factors, limit)
    sizes = [r.stop - r.start for r in region]
    for r, n, size in zip(region, shape, sizes):
        assert 0 <= r.start and r.stop <= n and size >= 1
        assert abs(r.start - (n - r.stop)) <= 1  # centred
    if math.prod(n * f for n, f in zip(shape, factors)) <= limit:
        assert sizes == list(shape)  # small enough: the whole image
    else:
        # One voxel per axis may be forced on an axis the limit would cut below one voxel.
        net = math.prod(max(s * f, f) for s, f in zip(sizes, factors))
        assert net <= limit * (1 + 1e-9) or min(sizes) == 1


def test_a_thin_stack_keeps_all_its_planes():
    region = size_check.crop_region((5, 4000, 4000), (1.0, 1.0, 1.0), 10**6)
    assert region[0] == slice(0, 5)
    assert region[1].stop - region[1].start == pytest.approx(math.sqrt(10**6 / 5), abs=2)


@pytest.mark.parametrize("voxel", [None, (3.0, 1.0, 1.0)])
def test_median_diameter_of_balls_in_px_of_the_plane(voxel):
    z = 1.0 if voxel is None else voxel[0]
    grid = np.indices((int(60 / z), 60, 60)).astype(float)
    grid[0] *= z
    labels = np.zeros(grid.shape[1:], np.int32)
    for i, centre in enumerate([(15, 15, 15), (15, 40, 40), (45, 15, 40)], 1):
        labels[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 8.0**2] = i
    diameter, count = size_check.median_diameter_px(labels, voxel)
    assert count == 3 and diameter == pytest.approx(16.0, rel=0.08)
    assert size_check.median_diameter_px(np.zeros((4, 4, 4), np.int32)) == (0.0, 0)


def test_plan_uses_the_checked_size_and_says_so():
    model = load_bundled(3)
    seen = []

    def refine(diameter, factors):
        seen.append((diameter, factors))
        return 20.0

    image = synth_stacks.microscope_stack(16.0, 1.0, 5, extent=(2.0, 4.0, 4.0)).image
    plan = rescale.plan_resampling(image, model, "auto", refine=refine)
    estimate = seen[0][0]
    assert plan.diameter == 20.0 and plan.factor == pytest.approx(rescale.scale_for(20.0, 14.0))
    assert seen[0][1] == rescale.axis_factors(rescale.scale_for(estimate, 14.0), 3)
    assert "20 px as the model sees a central crop" in plan.note
    kept = rescale.plan_resampling(image, model, "auto", refine=lambda d, f: None)
    assert kept.diameter == pytest.approx(estimate)
    given_size = rescale.plan_resampling(image, model, 10.0, refine=refine)
    assert given_size.diameter == 10.0 and len(seen) == 1  # a given size is never checked


def test_the_model_corrects_a_wrong_estimate_within_bounds():
    """A stack of 16 px nuclei told 12 px (a 25 % under-estimate): the crop's run at that scale
    measures close to 16; told 6 px, the answer stays within MAX_CHANGE of 6."""
    model = load_bundled(3)
    stack = synth_stacks.microscope_stack(16.0, 1.0, 11, extent=(2.0, 4.0, 4.0))
    factors = rescale.axis_factors(rescale.scale_for(12.0, 14.0), 3)
    checked = size_check.refine_diameter(stack.image, model, 12.0, factors, device="cpu")
    assert checked is not None and abs(checked - stack.diameter) < abs(12.0 - stack.diameter) / 2
    low = size_check.refine_diameter(stack.image, model, 6.0, rescale.axis_factors(14.0 / 6.0, 3), device="cpu")
    assert low is None or low <= 6.0 * size_check.MAX_CHANGE + 1e-9


def test_only_3d_single_channel_runs_are_checked():
    assert size_check.refiner(np.zeros((8, 8)), load_bundled(2), SegmentOptions()) is None
    assert size_check.refiner(np.zeros((4, 8, 8)), load_bundled(2), SegmentOptions()) is None
    assert callable(size_check.refiner(np.zeros((4, 8, 8)), load_bundled(3), SegmentOptions()))


def test_a_run_records_the_checked_size_and_reclusters_on_the_same_grid(tmp_path):
    """segment_to_zarr says what the crop measured and stores the size it used; changing only a
    clustering setting relabels the stored embeddings (the size, hence the grid, is the model's,
    not the settings')."""
    import zarr

    from napari_shiftseg.inference.segment import ATTRS, segment_to_zarr

    stack = synth_stacks.microscope_stack(16.0, 1.0, 12, extent=(2.0, 4.0, 4.0))
    out = tmp_path / "out.zarr"
    first = dict(segment_to_zarr(stack.image, out, None, diameter="auto", device="cpu").attrs[ATTRS])
    assert "as the model sees a central crop" in first["size_note"]
    assert abs(first["object_diameter"] - stack.diameter) < 0.2 * stack.diameter
    again = dict(segment_to_zarr(stack.image, out, None, diameter="auto", device="cpu", bandwidth=1.2).attrs[ATTRS])
    assert again["object_diameter"] == first["object_diameter"]
    assert again["embedding_args"] == first["embedding_args"] and again["cluster_args"] != first["cluster_args"]
    assert zarr.open_group(str(out), mode="r")["labels/instances/0"].shape == stack.image.shape


def test_cancel_stops_the_crop_pass():
    import threading

    from napari_shiftseg.util import progress

    cancel = threading.Event()
    cancel.set()
    stack = synth_stacks.microscope_stack(16.0, 1.0, 13, extent=(2.0, 4.0, 4.0))
    refine = size_check.refiner(stack.image, load_bundled(3), SegmentOptions(device="cpu"), cancel)
    with pytest.raises(progress.Cancelled):
        refine(16.0, (1.0, 1.0, 1.0))


def test_the_checked_size_and_the_labels_do_not_depend_on_the_tile(tmp_path):
    """The crop's run has its own fixed tile, so the size (hence the resampled grid) and the
    exact tiled labels are the same whatever tile the user asks for."""
    import zarr

    from napari_shiftseg.inference.segment import ATTRS, segment_to_zarr

    stack = synth_stacks.microscope_stack(20.0, 2.0, 14, extent=(2.0, 4.0, 4.0))
    runs = []
    for tile in (32, 96):
        out = tmp_path / f"t{tile}.zarr"
        group = segment_to_zarr(stack.image, out, None, diameter="auto", device="cpu", tile=tile,
                                voxel_size=stack.voxel_size)
        runs.append((group.attrs[ATTRS]["object_diameter"],
                     np.asarray(zarr.open_group(str(out), mode="r")["labels/instances/0"])))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].max() > 5
    np.testing.assert_array_equal(_partition(runs[0][1]), _partition(runs[1][1]))  # ids may differ


def _partition(labels) -> np.ndarray:
    """Labels renumbered by first appearance: equal partitions give equal arrays."""
    ids, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(ids.size, np.int64)
    rank[np.argsort(first)] = np.arange(ids.size)
    return rank[inverse].reshape(labels.shape)
