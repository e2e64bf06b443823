"""The Qt-free helpers behind the widgets: colours, placement, preview regions (no viewer)."""

import dask.array as da
import numpy as np

from napari_shiftseg._widgets import _layers
from napari_shiftseg._widgets._layers import layer_name
from napari_shiftseg.inference import results, session
from napari_shiftseg.network.geometry import UNetGeometry


def test_embeddings_to_rgb_pca_lazy_and_eager():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 12, 20)).astype(np.float32)       # E = 5 -> PCA to 3
    eager = _layers.embeddings_to_rgb(emb)
    lazy = _layers.embeddings_to_rgb(da.from_array(emb, chunks=(5, 6, 10)))
    assert eager.shape == lazy.shape == (12, 20, 3) and isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), eager, atol=1e-6)
    assert eager.min() >= 0 and eager.max() <= 1 and eager.std() > 0.1
    assert _layers.embeddings_to_rgb(emb[:2]).shape == (12, 20, 3)  # E = 2 padded


def test_layer_names_and_placement():
    where = _layers.placement((2.0, 0.5), (10.0, -5.0), origin=(8, 16))
    assert where == {"scale": (2.0, 0.5), "translate": (26.0, 3.0)}
    data, kwargs, kind = _layers.result_layer(np.zeros((4, 4), bool), "grid", "img", where)
    assert kind == "image" and kwargs["name"] == layer_name("img", "grid") and data.dtype == np.uint8
    # What the layer is comes first (the layer list cuts names off at the right).
    assert layer_name("a_long_image_name", "tile_boundaries").startswith("tile boundaries")
    # Maps over the image leave it visible.
    for over in ("embeddings", "phase"):
        assert _layers.result_layer(np.zeros((4, 4, 3) if over == "embeddings" else (4, 4), np.float32),
                                    over, "img", where)[1]["opacity"] < 1


def test_preview_region_on_the_grid():
    g = UNetGeometry(ndim=3, levels=2)                           # f^l = 4
    region = session.preview_region((30, 100, 100), g, {1: (13, 50), 2: (0, 100)}, (9.6, 0, 0))
    assert region == (slice(8, 12), slice(12, 52), slice(0, 100))
    grown = g.context_region(region, (30, 100, 100))
    assert all(r.start % 4 == 0 for r in grown) and grown[0] == slice(0, 30)


def test_preview_keeps_objects_its_edge_cuts():
    from napari_shiftseg.inference.session import keep_cut_objects

    labels = np.zeros((4, 20, 20), np.int32)
    labels[:, 8:12, 8:12] = 1          # 64 voxels, touches the slab's top and bottom faces
    labels[1:3, 2:4, 14:16] = 2        # 8 voxels, inside: really small
    labels[1:3, 14:18, 2:6] = 3        # 32 voxels, inside: kept by size
    out, kept = keep_cut_objects(labels, min_size=100)
    assert kept == 1 and out.max() == 1 and (out[labels == 1] == 1).all()
    out, kept = keep_cut_objects(labels, min_size=20)
    assert kept == 0 and out.max() == 2 and not out[labels == 2].any()


def test_network_grid_maps_of_a_resampled_volume_on_the_image_grid():
    """issue 26: a volume resampled 2x in z (16 network planes for 8) shows its network-grid
    maps on the image's planes: the nearest plane for embeddings, the maximum over the planes a
    voxel holds for one-plane lines (the f^l grid), so no line falls between sampled planes."""
    resampled = results.Resampled(origin=(0, 0, 0), working_shape=(16, 6, 6), image_shape=(8, 6, 6),
                                    factor=1.0)
    result = results.SegmentResult(np.zeros((2, 16, 6, 6), np.float32), np.zeros((8, 6, 6), np.int32),
                                     resampled=resampled)
    where = _layers.placement((2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert _layers.shown_on_image_grid(result)
    grid = np.zeros((16, 6, 6), bool)
    grid[::4] = True                                   # planes 0, 4, 8, 12 (the odd ones are sampled)
    data, kwargs, _ = _layers.network_layer(grid, "grid", "vol", result, where)
    assert data.shape == (8, 6, 6) and kwargs["scale"] == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(data[:, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0])
    plane = np.arange(16, dtype=np.float32)[:, None, None] * np.ones((16, 6, 6), np.float32)
    nearest, _, _ = _layers.network_layer(plane, "foreground", "vol", result, where)
    np.testing.assert_array_equal(nearest[:, 0, 0], np.arange(1, 16, 2))   # floor((i + 0.5) * 2)
    lazy, _, _ = _layers.network_layer(da.from_array(grid, chunks=4), "grid", "vol", result, where)
    assert isinstance(lazy, da.Array) and lazy.shape == (8, 6, 6)
    # A 2D image (no slider): shown on the network's grid, placed over the image.
    flat = results.SegmentResult(np.zeros((2, 12, 12), np.float32), np.zeros((6, 6), np.int32),
                                   resampled=results.Resampled((0, 0), (12, 12), (6, 6), 2.0))
    data, kwargs, _ = _layers.network_layer(np.zeros((12, 12), bool), "grid", "img", flat,
                                            _layers.placement((1.0, 1.0), (0.0, 0.0)))
    assert data.shape == (12, 12) and kwargs["scale"] == (0.5, 0.5)


def test_labels_on_the_image_grid_are_numbered_again():
    """issue 26: objects lost between the sampled planes leave no gaps in the ids, so the
    status line's "n objects" (the largest id) is what the layer holds."""
    resampled = results.Resampled((0, 0, 0), (4, 2, 2), (2, 2, 2), 1.0)
    result = results.SegmentResult(np.zeros((2, 4, 2, 2), np.float32), np.zeros((2, 2, 2), np.int32),
                                     resampled=resampled)
    working = np.zeros((4, 2, 2), np.int32)
    working[0], working[1], working[3, 0] = 1, 2, 3     # planes 1 and 3 are sampled: 1 is lost
    labels = results.labels_on_image_grid(result, working)
    np.testing.assert_array_equal(labels[:, 0, 0], [1, 2])  # 2 and 3, numbered again
    assert labels.max() == np.unique(labels[labels > 0]).size == 2 and labels.dtype == np.int32
