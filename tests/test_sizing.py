"""The object size measured from the image (sizing), the one resampling rule that uses it
(rescale.plan_resampling), thin stacks and the nonsense guard (issue 24)."""

import numpy as np
import pytest

from napari_shiftseg.imaging import rescale, sizing
from napari_shiftseg.inference import sanity
from napari_shiftseg.network.modelio import load_bundled
from napari_shiftseg.synthetic import synth_stacks
from napari_shiftseg.util._errors import ShiftSegError


def _disks(shape, diameter, spacing, seed=0):
    """Bright balls/disks of one ``diameter`` (px of the finest axis) on a noisy background,
    with voxels ``spacing`` (z coarser than the pixel: fewer planes)."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    grid = np.indices(shape).astype(np.float32)
    image = np.zeros(shape, np.float32)
    step = diameter * 1.6
    centres = np.stack(np.meshgrid(*[np.arange(step / 2 / s, n, step / s) for n, s in zip(shape, spacing)],
                                   indexing="ij"), -1).reshape(-1, ndim)
    for c in centres:
        c = c + rng.uniform(-0.1, 0.1, ndim) * diameter / np.asarray(spacing)
        d2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, spacing))
        image += (d2 <= (diameter / 2) ** 2).astype(np.float32) * rng.uniform(0.6, 1.0)
    return image + rng.normal(0, 0.05, shape).astype(np.float32)


@pytest.mark.parametrize(("shape", "diameter", "spacing"), [
    ((160, 160), 8, (1, 1)),
    ((256, 256), 30, (1, 1)),
    ((24, 96, 96), 10, (1, 1, 1)),
    ((12, 128, 128), 16, (3, 1, 1)),      # z step 3x the pixel
    ((8, 160, 160), 24, (5, 1, 1)),       # z step 5x
])
def test_size_of_generated_blobs_is_found_within_25_percent(shape, diameter, spacing):
    image = _disks(shape, diameter, spacing)
    found = sizing.estimate_size(image, spacing)
    assert found is not None
    assert abs(np.log(found.diameter / diameter)) < np.log(1.25), found


def test_anisotropy_matters_only_through_the_voxel_size():
    image = _disks((12, 128, 128), 16, (3, 1, 1))
    right = sizing.estimate_size(image, (3, 1, 1)).diameter
    # Read as cubic voxels, the balls are 3x flatter: the inscribed radius is the short axis.
    wrong = sizing.estimate_size(image, None).diameter
    assert wrong < 0.8 * right


def test_size_estimate_of_a_realistic_stack():
    stack = synth_stacks.microscope_stack(16, 2.0, seed=11, extent=(3.0, 8.0, 8.0))
    found = sizing.estimate_size(stack.image, stack.voxel_size)
    assert abs(np.log(found.diameter / stack.diameter)) < np.log(1.25)


def test_a_flat_image_has_no_size():
    assert sizing.estimate_size(np.zeros((64, 64), np.float32)) is None
    with pytest.raises(ShiftSegError, match="2D or 3D"):
        sizing.estimate_size(np.zeros((2, 3, 4, 5)))


def test_a_stack_thinner_than_its_nuclei_is_called_thin():
    image = np.stack([_disks((200, 200), 40, (1, 1))] * 4)  # 4 planes through 40 px nuclei
    found = sizing.estimate_size(image, (1.0, 1.0, 1.0))
    assert found.thin and "z projection" in found.describe()
    assert abs(np.log(found.diameter / 40)) < np.log(1.25)
    assert not sizing.estimate_size(_disks((40, 96, 96), 10, (1, 1, 1))).thin


def test_benchmark_stacks_are_held_out():
    from napari_shiftseg.synthetic import synth

    assert all(seed in synth.TEST_SEEDS for *_, seed in synth_stacks.BENCHMARK_STACKS)
    # Dev stacks choose models and settings: never held-out seeds, never the benchmark's.
    dev = {seed for *_, seed in synth_stacks.DEV_STACKS}
    assert not dev & set(synth.TEST_SEEDS) and len(dev) == len(synth_stacks.DEV_STACKS)


# ---- the one resampling rule ------------------------------------------------------------------


def test_plan_resamples_down_as_well_as_up_and_says_so():
    model = load_bundled(3)  # learnt 14 px nuclei
    big = rescale.plan_resampling(np.zeros((8, 8, 8)), model, 56.0)
    assert big.factor == pytest.approx(0.25) and big.factors == (0.25, 0.25, 0.25)
    assert "resampled x0.25 to the model's 14 px" in big.note
    small = rescale.plan_resampling(np.zeros((8, 8, 8)), model, 7.0)
    assert small.factor == pytest.approx(2.0)


def test_plan_uses_an_anisotropic_voxel_size_without_being_asked():
    model = load_bundled(3)
    plan = rescale.plan_resampling(np.zeros((8, 8, 8)), model, 14.0, voxel_size=(2.0, 0.5, 0.5))
    assert plan.isotropic and plan.factors == (4.0, 1.0, 1.0)
    assert "voxels made cubic" in plan.note
    kept = rescale.plan_resampling(np.zeros((8, 8, 8)), model, 14.0, voxel_size=(2.0, 0.5, 0.5),
                                   isotropic=False)
    assert not kept.isotropic and kept.factors == (1.0, 1.0, 1.0)
    cubic = rescale.plan_resampling(np.zeros((8, 8, 8)), model, 14.0, voxel_size=(1.0, 1.0, 1.0))
    assert not cubic.isotropic


def test_plan_measures_auto_from_the_image():
    model = load_bundled(3)
    image = _disks((24, 112, 112), 28, (1, 1, 1))
    plan = rescale.plan_resampling(image, model, "auto")
    assert plan.diameter is not None and abs(np.log(plan.diameter / 28)) < np.log(1.25)
    assert plan.factor < 0.7 and "from the image" in plan.note


def test_resampling_beyond_the_budget_is_refused():
    with pytest.raises(ShiftSegError, match="check the voxel size"):
        rescale.check_growth((16, 64, 64), (1000.0, 1.0, 1.0))
    assert rescale.check_growth((16, 64, 64), (2.0, 0.5, 0.5)) == (32, 32, 32)


# ---- the guard ---------------------------------------------------------------------------------


def test_guard_names_over_splitting_and_a_full_foreground():
    expected = sanity.expected_voxels(40, 3, (0.29, 0.26, 0.26), planes=60)  # the stack
    assert sanity.result_warning(395, 1081, 0.3, expected).startswith("warning: 395 objects")
    assert "foreground covers 80 %" in sanity.result_warning(5, 30000, 0.8, expected)
    assert sanity.result_warning(20, 0.8 * expected, 0.3, expected) == ""
    assert sanity.result_warning(5, 10, 0.3, expected) == ""  # a few small objects are normal


def test_expected_size_of_cut_nuclei_in_a_slab():
    slab = sanity.expected_voxels(60, 3, (1.0, 0.2, 0.2), planes=5)
    assert slab == pytest.approx(np.pi / 4 * 60**2 * 5)


def test_a_large_lazy_image_is_read_once_and_only_a_central_crop(monkeypatch):
    """The estimate reads at most READ_VOXELS voxels, once, whatever the volume (issue 27):
    coarse levels used to read the whole image again each."""
    import dask.array as da

    image = _disks((24, 160, 160), 12, (1, 1, 1))

    class Counted:  # a lazy image that counts its reads
        def __init__(self, data):
            self.data, self.reads, self.voxels = da.from_array(data, chunks=32), 0, 0
            self.shape, self.ndim = data.shape, data.ndim

        def __getitem__(self, key):
            part = self.data[key]
            self.reads += 1
            self.voxels += part.size
            return part

    monkeypatch.setattr(sizing, "READ_VOXELS", image.size // 3)
    lazy = Counted(image)
    found = sizing.estimate_size(lazy)
    assert lazy.reads == 1 and lazy.voxels <= image.size // 3
    assert abs(np.log(found.diameter / 12)) < np.log(1.25)
    whole = sizing.estimate_size(image)  # below the bound: every voxel, as before
    assert abs(np.log(whole.diameter / 12)) < np.log(1.25)
