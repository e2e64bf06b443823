import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.util._errors import ShiftSegError

geometries = st.builds(
    UNetGeometry,
    ndim=st.sampled_from([2, 3]),
    levels=st.integers(1, 4),
    factor=st.integers(2, 3),
    convs_per_level=st.integers(1, 3),
    kernel_size=st.sampled_from([1, 3, 5]),
)


@pytest.mark.parametrize("levels, context, residue", [(2, 40, 0), (3, 88, 4), (4, 184, 12)])
def test_context_matches_theory(levels, context, residue):
    g = UNetGeometry(levels=levels)
    assert g.context == 4 * (3 * 2**levels - 2) == context
    assert g.input_residue == residue == (2**levels - 4) % 2**levels
    assert g.capacity == 2 ** (2 * levels)


def test_theory_examples():
    g3, g4 = UNetGeometry(levels=3), UNetGeometry(levels=4)
    assert (g3.output_size(108), g3.output_size(220)) == (20, 132)
    assert (g4.output_size(204), g4.output_size(316)) == (20, 132)
    assert g3.tile_input_size(128) == 220 and g3.crop_front == 2
    assert UNetGeometry(ndim=3, levels=3).capacity == 512


@given(geometries)
def test_general_factor_context(g):
    r = g.convs_per_level * (g.kernel_size - 1)
    assert g.context == r * (2 * (g.grid - 1) // (g.factor - 1) + g.grid)


@given(geometries, st.integers(1, 6))
def test_tile_sizes_are_consistent(g, n):
    tile = n * g.grid
    size = g.tile_input_size(tile)
    assert g.is_valid_input(size)
    assert g.output_size(size) == tile + g.output_residue
    assert 0 <= g.crop_front <= g.output_residue < g.grid
    # the input window starts on a fixed offset from the output tile, the same for every tile
    assert -g.input_offset == g.context_per_side + g.crop_front


@given(geometries, st.integers(1, 500))
def test_snap_tile_is_multiple_of_grid(g, tile):
    snapped = g.snap_tile(tile)
    assert snapped % g.grid == 0 and snapped >= g.grid
    assert abs(snapped - tile) <= max(g.grid // 2, g.grid - tile)


@given(geometries, st.integers(1, 300))
def test_nearest_valid_input(g, size):
    valid = g.nearest_valid_input(size)
    assert g.is_valid_input(valid) and valid >= size
    assert not any(g.is_valid_input(s) for s in range(size, valid))


def test_check_tile_refuses_non_grid_tiles():
    g = UNetGeometry(levels=3)
    assert g.check_tile(64) == (64, 64)
    assert (g.snap_tile(100), g.snap_tile(20), g.snap_tile(3)) == (104, 24, 8)
    with pytest.raises(ShiftSegError, match="multiple of f\\^l = 8"):
        g.check_tile((60, 64))


def test_training_window_rule():
    g = UNetGeometry(levels=3)
    with pytest.raises(ShiftSegError, match="larger than f\\^l = 8"):
        g.check_training_window(8)
    assert g.check_training_window(8, allow_small=True) == (8, 8)
    assert g.check_training_window(12) == (12, 12)
    assert g.output_size(g.training_input_size(12)) == 12
    assert g.output_size(g.training_input_size(9)) == 12


def test_phase_and_invalid_sizes():
    g = UNetGeometry(levels=3)
    assert g.phase((0, 0)) == 0 and g.phase((8, 16)) == 0
    assert g.phase((1, 0)) == 8 and g.phase((7, 7)) == 63
    with pytest.raises(ShiftSegError, match="not valid"):
        g.output_size(101)
    for bad in (dict(ndim=4), dict(levels=0), dict(factor=1), dict(kernel_size=2), dict(padding="full")):
        with pytest.raises(ShiftSegError):
            UNetGeometry(**bad)


def test_same_padding_has_no_context():
    g = UNetGeometry(levels=3, padding="same")
    assert g.context == 0 and g.output_size(64) == 64 and g.tile_input_size(64) == 64
    assert not g.is_valid_input(60)


@pytest.mark.parametrize("levels, offset", [(1, 0), (2, 2), (3, 0), (4, 0)])
def test_cell_offset(levels, offset):
    g = UNetGeometry(levels=levels)
    assert g.cell_offset == offset
    assert g.phase((offset, offset)) == 0 and g.phase((offset + 1, offset)) == g.grid
    assert UNetGeometry(levels=levels, padding="same").cell_offset == 0


@settings(max_examples=60, deadline=None)
@given(levels=st.integers(1, 3), ndim=st.integers(2, 3), lead=st.integers(0, 1),
       data=st.data())
def test_snap_and_context_regions(levels, ndim, lead, data):
    """snap_region: whole f^l cells around the region; context_region: starts on the grid and
    reaches past every voxel's receptive field; both keep a stack's slice axis as it is."""
    g = UNetGeometry(ndim=ndim, levels=levels)
    shape = tuple(data.draw(st.integers(1, 200)) for _ in range(lead + ndim))
    region = []
    for n in shape:
        a = data.draw(st.integers(0, n - 1))
        region.append(slice(a, data.draw(st.integers(a + 1, n))))
    snapped = g.snap_region(region, shape)
    grown = g.context_region(region, shape)
    assert snapped[:lead] == tuple(region[:lead]) and grown[:lead] == tuple(region[:lead])
    for r, s_, c, n in zip(region[lead:], snapped[lead:], grown[lead:], shape[lead:]):
        assert s_.start % g.grid == 0 and s_.start <= r.start and r.stop <= s_.stop <= n
        assert s_.stop == n or s_.stop % g.grid == 0
        assert c.start % g.grid == 0 and c.start <= r.start and r.stop <= c.stop <= n
        # the receptive field of the region's first and last voxels lies inside (or the image ends)
        assert c.start == 0 or r.start - c.start >= g.context_per_side
        assert c.stop == n or c.stop - r.stop >= g.context_per_side
