"""The region value object: its set algebra checked against numpy masks (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.util._errors import ShiftSegError
from napari_shiftseg.util.region import Region

SHAPE = (12, 13)


@st.composite
def regions(draw, shape=SHAPE):
    offset, size = [], []
    for n in shape:
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        offset.append(a)
        size.append(b - a)
    return Region(tuple(offset), tuple(size))


def mask(region: Region, shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[region.to_slices()] = True
    return out


@settings(max_examples=150, deadline=None)
@given(regions(), regions())
def test_intersect_union_and_contains_agree_with_masks(a, b):
    np.testing.assert_array_equal(mask(a.intersect(b)), mask(a) & mask(b))
    assert a.intersect(b) == b.intersect(a)
    union = a.union(b)
    assert (mask(union) >= (mask(a) | mask(b))).all()  # the bounding box holds both
    assert union.contains(a) and union.contains(b)
    assert a.contains(a.intersect(b)) and b.contains(a.intersect(b))
    assert a.contains(b) == bool((mask(a) >= mask(b)).all())


@settings(max_examples=150, deadline=None)
@given(regions(), regions(), st.integers(0, 3), st.integers(0, 3))
def test_slices_round_trip_relative_and_grow(a, outer, before, after):
    assert Region.from_slices(a.to_slices()) == a
    assert Region.from_slices(a.to_slices(), SHAPE) == a
    assert hash(a) == hash(Region(a.offset, a.shape))
    # Cutting ``a`` out of the array of ``outer`` reads a's voxels, where outer holds them.
    image = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    if outer.contains(a) and not a.empty:
        inner = a.relative_to(outer).to_slices()
        np.testing.assert_array_equal(image[outer.to_slices()][inner], image[a.to_slices()])
    whole = Region.whole(SHAPE)
    grown = a.grow(before, after, within=whole)
    assert whole.contains(grown) and (a.empty or grown.contains(a))
    assert a.grow(before, after).shape == tuple(s + before + after for s in a.shape)
    assert a.shift(3).shift(-3) == a


def test_open_slices_need_the_shape_and_steps_are_refused():
    assert Region.from_slices((slice(None), slice(2, None)), (5, 6)) == Region((0, 2), (5, 4))
    assert Region.from_slices((slice(-3, None),), (10,)) == Region((7,), (3,))
    with pytest.raises(ShiftSegError, match="open end"):
        Region.from_slices((slice(None, 4),))
    with pytest.raises(ShiftSegError, match="step"):
        Region.from_slices((slice(0, 4, 2),), (8,))
    with pytest.raises(ShiftSegError, match="negative"):
        Region((0,), (-1,))
    with pytest.raises(ShiftSegError, match="whole numbers"):
        Region((0.5,), (1,))
    with pytest.raises(ShiftSegError, match="do not combine"):
        Region((0,), (1,)).intersect(Region((0, 0), (1, 1)))


@settings(max_examples=60, deadline=None)
@given(regions((40, 44)))
def test_snap_and_context_ask_the_geometry(region):
    g = UNetGeometry(ndim=2, levels=2)
    shape = (40, 44)
    if region.empty:
        return
    snapped = region.snap(g, shape)
    assert snapped.contains(region) and Region.whole(shape).contains(snapped)
    assert all(o % g.grid == 0 for o in snapped.offset)  # starts on the global f^l grid
    context = region.with_context(g, shape)
    assert context.contains(region) and Region.whole(shape).contains(context)
