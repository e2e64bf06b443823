"""npe2 reader for shiftseg model files: dropping a ``.safetensors`` model on napari (or
File > Open) loads it into the Segment widget instead of adding a layer.

A model is not image data, so the reader returns napari's documented "read, but no layers"
sentinel ``[(None,)]`` after handing the file to the widget. The widget validates the file
and shows a one-line error (and keeps its previous model) when it is not a shiftseg model.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-shiftseg"


def get_reader(path):
    """Return a reader for a single shiftseg ``.safetensors`` model file, else None."""
    if not isinstance(path, (str, Path)) or Path(path).suffix != ".safetensors":
        return None
    return _open_in_segment_widget


def _open_in_segment_widget(path):
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return [(None,)]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.set_model_file(path)
    return [(None,)]


def get_segmentation_reader(path):
    """Return a reader for a ``shiftseg segment`` output (``OUT.zarr``), else None."""
    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() != ".zarr":
        return None
    from .segment import ATTRS, FORMAT

    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        if dict(group.attrs.get(ATTRS) or {}).get("format") != FORMAT:
            return None
    except Exception:  # noqa: BLE001 - not a zarr group, or not ours: another reader's turn
        return None
    return read_segmentation


def read_segmentation(path):
    """Layers of a finished ``shiftseg segment`` output: the input image (when its file is still
    there), instances, foreground and embeddings, all placed with the input's voxel size (the
    network's own grid, for a resampled run, placed over the image)."""
    from types import SimpleNamespace

    import dask.array as da
    import zarr

    from ._widgets._layers import embeddings_to_rgb, layer_name, resampled_placement, sigmoid
    from .io import read_spatial
    from .ngff import LABELS
    from .segment import ATTRS

    group = zarr.open_group(str(path), mode="r")
    info = dict(group.attrs[ATTRS])
    name = Path(path).stem
    labels = da.from_zarr(group[LABELS])
    scale = tuple(float(v) for v in info.get("voxel_size") or (1.0,) * labels.ndim)
    layers = []
    source = info.get("input") or {}
    if source.get("path") and Path(source["path"]).exists():
        try:
            image = read_spatial(source["path"], source.get("channel"))
            several = isinstance(source.get("channel"), list)  # a multi-channel model's input
            layers.append((image, {"name": Path(source["path"]).name, "scale": scale,
                                   **({"channel_axis": 0} if several else {})}, "image"))
        except Exception:  # noqa: BLE001 - the input moved or changed: show the results anyway
            pass
    emb = da.from_zarr(group["embeddings"])
    # A resampled run: the network's grid placed over the image's (one formula, _layers').
    grid = SimpleNamespace(origin=(0,) * labels.ndim, working_shape=emb.shape[1:],
                           image_shape=labels.shape)
    net = resampled_placement({"scale": scale, "translate": (0.0,) * labels.ndim}, None, grid)
    foreground = "foreground" in group
    channels = emb.shape[0] - int(foreground)
    layers.append((embeddings_to_rgb(emb[:channels]),
                   {"name": layer_name(name, "embeddings"), "rgb": True, "opacity": 0.5, **net},
                   "image"))
    if foreground:
        layers.append((sigmoid(emb[channels]),
                       {"name": layer_name(name, "foreground"), "colormap": "green",
                        "blending": "additive", "contrast_limits": (0.0, 1.0), "visible": False,
                        **net}, "image"))
    layers.append((labels, {"name": layer_name(name, "instances"), "scale": scale, "opacity": 0.6},
                   "labels"))
    return layers
