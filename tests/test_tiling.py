"""Tile plans: coverage round trip, valid windows on the global grid, padding, modes."""

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.tiling import gaussian_weight, reflect_index, reflect_pad, tile_plan
from napari_shiftseg.util._errors import ShiftSegError


@st.composite
def plans(draw, modes=("exact", "naive", "blend")):
    ndim = draw(st.sampled_from([2, 3]))
    levels = draw(st.integers(1, 3 if ndim == 2 else 2))
    padding = draw(st.sampled_from(["valid", "valid", "same"]))
    g = UNetGeometry(ndim=ndim, levels=levels, padding=padding)
    shape = tuple(draw(st.lists(st.integers(1, 70), min_size=ndim, max_size=ndim)))
    mode = draw(st.sampled_from(modes))
    if mode == "exact":
        tile = tuple(g.grid * n for n in draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    else:
        tile = tuple(draw(st.lists(st.integers(2, 40), min_size=ndim, max_size=ndim)))
    return g, shape, tile, mode


def _reassemble(plan, image):
    """csbdeep-style round trip: each tile 'computes' the image at its own output coordinates."""
    copy = np.zeros_like(image)
    count = np.zeros(image.shape, dtype=int)
    for t in plan:
        # raw output voxel j of tile t sits at image coordinate start + j - crop_front
        raw_index = [np.arange(a.compute) + s - a.crop for a, s in zip(plan.axes, t.start)]
        raw = image[np.ix_(*[reflect_index(i, n) for i, n in zip(raw_index, image.shape)])]
        copy[t.write] = raw[t.crop]
        count[t.write] += 1
    return copy, count


@settings(max_examples=60, deadline=None)
@given(plans(modes=("exact", "naive")))
def test_round_trip_covers_image_exactly_once(case):
    g, shape, tile, mode = case
    plan = tile_plan(shape, g, tile, mode)
    image = np.random.default_rng(0).random(shape)
    copy, count = _reassemble(plan, image)
    assert (count == 1).all()
    np.testing.assert_array_equal(copy, image)
    assert len(list(plan)) == plan.n_tiles == int(np.prod(plan.grid_shape))


@settings(max_examples=60, deadline=None)
@given(plans())
def test_windows_valid_inside_padding_and_on_grid(case):
    g, shape, tile, mode = case
    plan = tile_plan(shape, g, tile, mode)
    for t in plan:
        for a, w, start in zip(plan.axes, t.window, t.start):
            assert g.is_valid_input(w.stop - w.start)
            assert 0 <= w.start and w.stop <= a.padded
            image_start = w.start - a.pad[0]  # window start in image coordinates
            assert image_start == start + g.input_offset
            if mode == "exact":
                assert start % g.grid == 0
                assert image_start % g.grid == g.input_offset % g.grid
                assert a.tile % g.grid == 0
                assert a.pad[0] == -g.input_offset


@settings(max_examples=40, deadline=None)
@given(plans(modes=("blend",)))
def test_blend_tiles_overlap_and_cover(case):
    g, shape, tile, _ = case
    plan = tile_plan(shape, g, tile, "blend")
    count = np.zeros(shape, dtype=int)
    for t in plan:
        count[t.write] += 1
    assert (count >= 1).all()
    assert plan.stride == tuple(max(1, int(t * 0.75)) for t in tile)
    assert sum(sum(c) for c in plan.chunks) == sum(shape)


def test_exact_padding_is_ceil_of_tiles():
    g = UNetGeometry(ndim=2, levels=3)
    plan = tile_plan((300, 201), g, 96)
    for a in plan.axes:
        extent = -(-a.size // a.tile) * a.tile
        last_window_end = (a.count - 1) * a.tile + g.input_offset + a.window
        assert a.pad == (-g.input_offset, last_window_end - a.size)
        assert a.count * a.tile == extent


def test_exact_snaps_and_says_so():
    g = UNetGeometry(ndim=2, levels=3)
    plan = tile_plan((500, 500), g, (98, 128))
    assert plan.requested == (98, 128)
    assert plan.tile == (96, 128)
    assert "(98, 128)" in plan.message and "(96, 128)" in plan.message
    assert tile_plan((500, 500), g, 128).message == ""


def test_exact_tile_is_not_larger_than_one_covering_tile():
    g = UNetGeometry(ndim=2, levels=3)
    plan = tile_plan((50, 500), g, 256)
    assert plan.tile == (56, 256)
    assert plan.grid_shape == (1, 2)
    assert "covering" in plan.message


def test_anisotropic_tiles():
    g = UNetGeometry(ndim=3, levels=3)
    plan = tile_plan((40, 300, 300), g, (32, 256, 256))
    assert plan.tile == (32, 256, 256)
    assert plan.grid_shape == (2, 2, 2)
    assert plan.window_shape == tuple(g.tile_input_size(t) for t in (32, 256, 256))


def test_exact_refuses_tiles_below_grid():
    g = UNetGeometry(ndim=2, levels=3)
    with pytest.raises(ShiftSegError, match="smaller than f\\^l = 8"):
        tile_plan((100, 100), g, (4, 64))


def test_naive_moves_last_tile_inward():
    g = UNetGeometry(ndim=2, levels=3)
    plan = tile_plan((100, 30), g, 30, mode="naive")
    a = plan.axes[0]
    assert a.starts == (0, 30, 60, 70)  # the last tile ends at the border, off the f^l grid
    assert a.write(3) == slice(90, 100)
    assert plan.tile == (30, 30) and plan.message == ""


def test_same_padding_uses_same_code():
    g = UNetGeometry(ndim=2, levels=2, padding="same")
    plan = tile_plan((30, 17), g, 8)
    assert plan.pad_width[0][0] == 0 and plan.window_shape == (8, 8)
    copy, count = _reassemble(plan, np.arange(30 * 17.0).reshape(30, 17))
    assert (count == 1).all()


def test_repr_reads_like_a_tiling():
    text = repr(tile_plan((300, 200), UNetGeometry(ndim=2, levels=3), 100))
    assert text.startswith("TilePlan(mode='exact'")
    assert "axis 0: size 300 = 3 x tile 104" in text
    assert "note: tile (100, 100) changed to (104, 104)" in text


@pytest.mark.parametrize(
    "shape, tile, mode, match",
    [((10, 10), 16, "tiled", "mode"), ((10, 10, 10), 16, "exact", "model is 2D"),
     ((0, 10), 16, "exact", "empty"), ((10, 10), (16, 16, 16), "exact", "axes"),
     ((10, 10), -3, "naive", "positive"), ((10, 10), "big", "exact", "integer")],
)
def test_plan_errors(shape, tile, mode, match):
    with pytest.raises(ShiftSegError, match=match):
        tile_plan(shape, UNetGeometry(ndim=2, levels=2), tile, mode)


# ---- padding -----------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 9), before=st.integers(0, 25), after=st.integers(0, 25))
def test_reflect_pad_is_width_invariant_and_lazy(size, before, after):
    x = np.arange(size * 3.0).reshape(size, 3)
    padded = reflect_pad(x, ((before, after), (0, 0)))
    expected = x[reflect_index(np.arange(-before, size + after), size)]
    np.testing.assert_array_equal(padded, expected)
    if before < size and after < size:
        np.testing.assert_array_equal(padded, np.pad(x, ((before, after), (0, 0)), mode="reflect"))
    lazy = reflect_pad(da.from_array(x, chunks=(2, 3)), ((before, after), (0, 0)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), expected)
    # a wider pad shows the same values at the same coordinates
    wider = reflect_pad(x, ((before + 7, after + 3), (0, 0)))
    np.testing.assert_array_equal(wider[7:7 + len(padded)], padded)


def test_reflect_index_mirrors_without_repeating_edge():
    np.testing.assert_array_equal(reflect_index([-2, -1, 0, 3, 4, 5], 4), [2, 1, 0, 3, 2, 1])
    np.testing.assert_array_equal(reflect_index([-5, 7], 1), [0, 0])


def test_gaussian_weight():
    w = gaussian_weight((9, 16))
    assert w.shape == (9, 16) and w.dtype == np.float32
    assert np.isclose(w.max(), 1) and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_grid_note_says_where_tiles_start_on_the_grid():
    g = UNetGeometry(ndim=2, levels=3)
    assert "on the f^l grid (8 x 8)" in tile_plan((100, 100), g, 20, "exact").grid_note
    assert "4 x 4 px off the f^l grid" in tile_plan((100, 100), g, 20, "naive").grid_note
    assert tile_plan((100, 100), g, 20, "blend").grid_note.startswith("tiles start every 15 x 15 px, 7 x 7 px off")


def test_tile_for_is_the_one_answer_to_the_tile_a_run_uses():
    """Widgets, sweep and CLI ask tiling.tile_for; the plan then caps it at the image."""
    from napari_shiftseg.network.tiling import tile_for

    g = UNetGeometry(ndim=2, levels=2)
    assert tile_for(g, 30, "exact") == g.snap_tile(30) == 32
    assert tile_for(g, 30, "naive") == 30 and tile_for(g, 30, "blend") == 30
    assert tile_for(g, "auto", "exact") == "auto"
    assert tile_plan((200, 200), g, tile_for(g, 30, "exact")).tile == (32, 32)
    with pytest.raises(ShiftSegError, match="'auto'"):
        tile_for(g, "big", "exact")
