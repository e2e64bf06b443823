import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.unet import UNet, UNetConfig, memory_format
from napari_shiftseg.util._errors import ShiftSegError


def make_net(ndim, levels, upsampling="learnt", base=4, seed=0, padding="valid"):
    torch.manual_seed(seed)
    g = UNetGeometry(ndim=ndim, levels=levels, padding=padding)
    return UNet(UNetConfig(geometry=g, base_channels=base, upsampling=upsampling)).eval()


@pytest.mark.parametrize("ndim, levels", [(2, 2), (2, 3), (3, 1), (3, 2)])
def test_output_sizes_match_geometry(ndim, levels):
    net = make_net(ndim, levels, base=2)
    g = net.geometry
    for size in g.valid_input_sizes(g.min_input_size, g.min_input_size + 3 * g.grid):
        with torch.no_grad():
            out = net(torch.zeros((1, 1) + (size,) * ndim))
        assert out.shape == (1, 4) + (g.output_size(size),) * ndim


def test_invalid_input_is_refused():
    net = make_net(2, 3)
    with pytest.raises(ShiftSegError, match="not valid"):
        net(torch.zeros(1, 1, 101, 101))
    with pytest.raises(ShiftSegError, match="spatial axes"):
        net(torch.zeros(1, 1, 108, 108, 108))


def _shift_pair(net, shift, rng):
    g = net.geometry
    d = g.ndim
    size = g.nearest_valid_input(g.min_input_size + shift + g.grid)
    big = torch.from_numpy(rng.standard_normal((1, 1) + (size + shift,) * d).astype(np.float32))
    with torch.no_grad():
        a = net(big[(..., *[slice(0, size)] * d)])
        b = net(big[(..., *[slice(shift, shift + size)] * d)])
    # output of b at j equals output of a at j + shift, where both exist
    n = a.shape[-1] - shift
    return a[(..., *[slice(shift, shift + n)] * d)], b[(..., *[slice(0, n)] * d)]


@given(st.sampled_from([(2, 2), (2, 3), (3, 1), (3, 2)]), st.sampled_from(["learnt", "nearest"]),
       st.integers(0, 2**16), st.integers(1, 2))
def test_periodic_shift_equivariance(dims, upsampling, seed, n):
    net = make_net(*dims, upsampling=upsampling, seed=seed % 100)
    rng = np.random.default_rng(seed)
    a, b = _shift_pair(net, n * net.geometry.grid, rng)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


@pytest.mark.parametrize("dims", [(2, 2), (2, 3), (3, 2)])
def test_shift_by_one_is_not_equivariant(dims):
    net = make_net(*dims, upsampling="learnt")
    a, b = _shift_pair(net, 1, np.random.default_rng(1))
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


@pytest.mark.parametrize("upsampling, expected", [("learnt", 64), ("nearest", 1)])
def test_constant_input_distinct_functions(upsampling, expected):
    """Lemma 1: 2D, l=3 has f^(d·l) = 64 output functions with learnt upsampling, 1 with nearest."""
    net = make_net(2, 3, upsampling=upsampling, base=8)
    g = net.geometry
    size = g.tile_input_size(2 * g.grid)
    with torch.no_grad():
        out = net(torch.ones(1, 1, size, size))[0]
    vectors = out.reshape(out.shape[0], -1).T
    assert len(torch.unique(vectors, dim=0)) == expected == (g.capacity if upsampling == "learnt" else 1)


def test_same_padding_keeps_size_and_breaks_equivariance():
    net = make_net(2, 2, padding="same")
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32))
    assert out.shape[-2:] == (32, 32)
    a, b = _shift_pair(net, net.geometry.grid, np.random.default_rng(2))
    assert (a - b).abs().max() > 1e-4


def test_channels_last_gives_same_result():
    net = make_net(3, 2, base=2)
    x = torch.randn(1, 1, 60, 60, 60)
    with torch.no_grad():
        ref = net(x)
        fast = net.to(memory_format=memory_format(3))(x.contiguous(memory_format=memory_format(3)))
    assert torch.allclose(ref, fast, atol=1e-5)


def test_config_round_trip_and_errors():
    config = UNetConfig(geometry=UNetGeometry(ndim=3, levels=2), upsampling="nearest", embed_dim=5)
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert config.out_channels == 6
    with pytest.raises(ShiftSegError):
        UNetConfig(upsampling="bilinear")
    with pytest.raises(ShiftSegError, match="unknown"):
        UNetConfig.from_dict({**config.to_dict(), "evil": 1})
