"""The large lazy sample's generator: content independent of chunking, objects apart, every
plane populated, and only the asked-for voxels computed."""

import dask
import dask.callbacks
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_shiftseg.synthetic.synth_large import jittered_lattice
from napari_shiftseg.util._errors import ShiftSegError

SHAPE = (40, 70, 90)


@settings(max_examples=15, deadline=None)
@given(chunks=st.tuples(st.integers(1, 40), st.integers(5, 70), st.integers(5, 90)),
       seed=st.integers(0, 3))
def test_labels_do_not_depend_on_chunks(chunks, seed):
    _, reference = jittered_lattice(SHAPE, SHAPE, seed=seed)
    _, chunked = jittered_lattice(SHAPE, chunks, seed=seed)
    np.testing.assert_array_equal(chunked.compute(), reference.compute())


@pytest.mark.parametrize("shape", [(120, 150), SHAPE])
def test_objects_are_separate_whole_and_uniquely_labelled(shape):
    image, labels = jittered_lattice(shape, 32, seed=1)
    labels, image = labels.compute(), image.compute()
    ids = np.unique(labels[labels > 0])
    # Each id is one connected object and no two objects touch (one component per id).
    assert ndimage.label(labels > 0)[1] == ids.size > 10
    assert image.dtype == np.float32 and labels.dtype == np.int32
    inside = image[labels > 0].mean()
    assert inside > 0.5 and abs(image[labels == 0].mean()) < 0.1


def test_every_plane_shows_objects():
    _, labels = jittered_lattice((45, 60, 60), (1, 60, 60))
    per_plane = [np.unique(p).size - 1 for p in labels.compute()]
    assert min(per_plane) >= 5, per_plane


class _Count(dask.callbacks.Callback):
    """Records the keys of the lattice's own blocks as they are computed."""

    def __init__(self):
        super().__init__()
        self.blocks = []

    def _pretask(self, key, dsk, state):
        if isinstance(key, tuple) and "lattice" in str(key[0]):
            self.blocks.append(key)


def test_a_plane_computes_only_its_own_chunks():
    image, labels = jittered_lattice((64, 128, 128), (1, 64, 64))
    with dask.config.set(scheduler="sync"), _Count() as count:
        plane = image[10].compute()
    # Four blocks of 1 x 64 x 64 make the plane: nothing else of the volume is generated.
    assert len(count.blocks) == 4
    assert plane.shape == (128, 128) and plane.max() > 0.5
    _, whole = jittered_lattice((64, 128, 128), (64, 128, 128))
    np.testing.assert_array_equal(labels[10].compute(), whole[10].compute())


def test_same_seed_same_volume_other_seed_other_volume():
    a = jittered_lattice((30, 40, 40), 20, seed=2)[0].compute()
    b = jittered_lattice((30, 40, 40), 20, seed=2)[0].compute()
    c = jittered_lattice((30, 40, 40), 20, seed=3)[0].compute()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_settings_are_refused():
    with pytest.raises(ShiftSegError, match="half the spacing"):
        jittered_lattice((32, 32), 16, spacing=10, radius=5)
    with pytest.raises(ShiftSegError, match="2 or 3"):
        jittered_lattice((32,), 16)
    with pytest.raises(ShiftSegError, match="keep"):
        jittered_lattice((32, 32), 16, keep=0)


def test_nothing_is_computed_up_front():
    with dask.config.set(scheduler="sync"), _Count() as count:
        image, labels = jittered_lattice((512, 1024, 1024), (1, 256, 256))
    assert count.blocks == [] and image.shape == labels.shape == (512, 1024, 1024)
