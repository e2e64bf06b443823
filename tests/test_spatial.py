"""Spatial embeddings: global position · scale + the network's offset, exact under tiling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_shiftseg.inference.predict import predict_embeddings, predict_whole
from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.spatial import add_positions_torch, position_grid
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.training.loss import discriminative_loss
from napari_shiftseg.util._errors import ShiftSegError

torch.set_num_threads(1)


def _pair(ndim=2, scale=0.5, seed=0, free_channels=0):
    """The same weights as a free and as a spatial head (with ``free_channels`` more)."""
    torch.manual_seed(seed)
    geometry = UNetGeometry(ndim=ndim, levels=2)
    e = ndim + free_channels
    free = UNet(UNetConfig(geometry=geometry, base_channels=2, embed_dim=e)).eval()
    spatial = UNet(UNetConfig(geometry=geometry, base_channels=2, embed_dim=e,
                              embedding="spatial", position_scale=scale)).eval()
    spatial.load_state_dict(free.state_dict())
    return free, spatial


@settings(max_examples=8, deadline=None)
@given(st.tuples(st.integers(9, 40), st.integers(9, 40)), st.integers(1, 3), st.floats(0.05, 2.0),
       st.integers(0, 1))
def test_spatial_head_adds_global_positions_to_the_stitched_offsets(shape, n, scale, free_channels):
    free, spatial = _pair(scale=scale, free_channels=free_channels)
    image = np.random.default_rng(n).normal(size=shape).astype(np.float32)
    a = predict_embeddings(image, free, tile=4 * n, device="cpu").compute(scheduler="sync")
    b = predict_embeddings(image, spatial, tile=4 * n, device="cpu").compute(scheduler="sync")
    # Tiled is whole-image inference, positions and free channels included.
    np.testing.assert_allclose(b, predict_whole(image, spatial, device="cpu"), rtol=1e-6, atol=1e-5)
    grid = position_grid(shape, scale)
    np.testing.assert_allclose(b[:2], a[:2] + grid, rtol=1e-6, atol=1e-5)
    # The free channel(s) and the foreground logit are untouched.
    np.testing.assert_array_equal(b[2:], a[2:])


def test_two_d_model_on_a_stack_gets_in_plane_positions():
    _, spatial = _pair(scale=1.0)
    stack = np.random.default_rng(0).normal(size=(3, 20, 24)).astype(np.float32)
    out = predict_embeddings(stack, spatial, tile=8, device="cpu", per_slice=True).compute(scheduler="sync")
    single = predict_embeddings(stack[1], spatial, tile=8, device="cpu",
                                normalization=(float(np.percentile(stack, 1)), float(np.percentile(stack, 99.8))),
                                ).compute(scheduler="sync")
    np.testing.assert_allclose(out[:, 1], single, atol=1e-5)


def test_loss_does_not_depend_on_where_the_window_is():
    """Training adds window-local positions: a common shift changes nothing (gamma = 0)."""
    rng = np.random.default_rng(0)
    out = torch.from_numpy(rng.normal(size=(1, 2, 12, 12)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, size=(1, 12, 12)))
    local = add_positions_torch(out, 0.5)
    shifted = local + torch.tensor([7.0, -3.0]).view(1, 2, 1, 1)
    a, _ = discriminative_loss(local, labels, gamma=0.0)
    b, _ = discriminative_loss(shifted, labels, gamma=0.0)
    assert torch.allclose(a, b, atol=1e-5)


def test_spatial_config_is_validated():
    geometry = UNetGeometry(ndim=3, levels=1)
    with pytest.raises(ShiftSegError, match="embed_dim >= 3"):
        UNetConfig(geometry=geometry, embed_dim=2, embedding="spatial", position_scale=0.25)
    with pytest.raises(ShiftSegError, match="position_scale"):
        UNetConfig(geometry=geometry, embed_dim=3, embedding="spatial", position_scale=0.0)
    with pytest.raises(ShiftSegError, match="embedding must be one of"):
        UNetConfig(geometry=geometry, embedding="polar")
