"""Layer data tuples ``(data, kwargs, layer_type)`` for the results of the widgets.

Pure numpy/dask: nothing here imports Qt or napari, so it is tested without a display. Every
layer is named ``<kind> [<image>]`` (the kind first: the layer list cuts long names off at
the right) and placed with the source image's scale and
translate (shifted by the crop origin for a preview of part of the image).

A result computed on a resampled image (``inference.results.Resampled``) has its embeddings and
diagnostics on the grid the network ran on. In 2D they are shown there, placed over the image's
pixels. An image with a slider axis (3D, stacks) gets them back on its own pixels instead:
napari steps a slider by the finest scale of the layers on it, so one layer on a finer grid
made the z slider count resampled planes (0-94 for a 48-plane volume).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..imaging import rescale

#: kind -> (layer type, display settings). Diagnostic layers start hidden.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    # Maps drawn over the image are half transparent, so the image stays visible under them.
    "embeddings": ("image", {"rgb": True, "opacity": 0.5}),
    "foreground": ("image", {"colormap": "green", "blending": "additive", "contrast_limits": (0.0, 1.0),
                             "visible": False}),
    "instances": ("labels", {"opacity": 0.6}),
    # Mean-shift clusters before connected components: what the embeddings alone tell apart.
    "clusters": ("labels", {"opacity": 0.6, "visible": False}),
    "tile_boundaries": ("image", {"colormap": "gray", "blending": "additive", "opacity": 0.5,
                                  "visible": False}),
    "seams": ("image", {"colormap": "inferno", "blending": "additive", "visible": False}),
    "grid": ("image", {"colormap": "cyan", "blending": "additive", "opacity": 0.5, "visible": False}),
    "phase": ("image", {"colormap": "twilight", "opacity": 0.5, "visible": False}),
}

#: Voxels sampled to fit the PCA and the colour range of the embedding layer.
PCA_SAMPLES = 100_000


def layer_name(image_name: str, kind: str) -> str:
    """``instances [cells]``: what the layer is comes first, where it came from second."""
    return f"{kind.replace('_', ' ')} [{image_name}]"


def placement(scale, translate, origin=None) -> dict:
    """``scale``/``translate`` for a result whose voxel 0 is voxel ``origin`` of the source."""
    scale = tuple(float(s) for s in scale)
    translate = tuple(float(t) for t in translate)
    if origin is not None:
        translate = tuple(t + o * s for t, o, s in zip(translate, origin, scale))
    return {"scale": scale, "translate": translate}


def fit_rgb(sample: np.ndarray, seed: int = 0) -> tuple:
    """Colour mapping fitted on (E, N) sample embeddings: (mean, basis, low, high).

    E > 3 is reduced to its first three principal components; E < 3 is padded with zeros.
    Each colour channel is stretched between the 1st and 99th percentile of the sample.
    """
    points = np.asarray(sample, dtype=np.float32).reshape(sample.shape[0], -1).T  # (N, E)
    if len(points) > PCA_SAMPLES:
        points = points[np.random.default_rng(seed).choice(len(points), PCA_SAMPLES, replace=False)]
    e = points.shape[1]
    mean = points.mean(axis=0) if e > 3 else np.zeros(e, np.float32)
    if e > 3:
        basis = np.linalg.svd(points - mean, full_matrices=False)[2][:3].T      # (E, 3)
    else:
        basis = np.eye(e, 3, dtype=np.float32)
    projected = (points - mean) @ basis
    low, high = np.percentile(projected, [1, 99], axis=0)
    return mean, basis.astype(np.float32), low, np.where(high > low, high, low + 1.0)


def apply_rgb(block: np.ndarray, mapping: tuple) -> np.ndarray:
    """(E, *spatial) embeddings -> (*spatial, 3) float32 colours in [0, 1] (dask-blockwise)."""
    mean, basis, low, high = mapping
    points = np.moveaxis(np.asarray(block, dtype=np.float32), 0, -1)
    rgb = ((points - mean) @ basis - low) / (high - low)
    return np.clip(rgb, 0, 1).astype(np.float32)


def embeddings_to_rgb(embeddings, seed: int = 0):
    """(E, *spatial) embeddings as (*spatial, 3) colours; lazy for dask input.

    The mapping is fitted on a strided sample, so a lazy (zarr-backed) array is only read there.
    """
    step = max(1, int((np.prod(embeddings.shape[1:]) / PCA_SAMPLES) ** (1 / (embeddings.ndim - 1))))
    sample = embeddings[(slice(None),) + (slice(None, None, step),) * (embeddings.ndim - 1)]
    mapping = fit_rgb(np.asarray(sample.compute() if hasattr(sample, "compute") else sample), seed)
    if not hasattr(embeddings, "map_blocks"):
        return apply_rgb(embeddings, mapping)
    emb = embeddings.rechunk({0: -1})
    return emb.map_blocks(apply_rgb, mapping, dtype=np.float32, drop_axis=0,
                          new_axis=emb.ndim - 1, chunks=emb.chunks[1:] + ((3,),))


def sigmoid(logits):
    """Foreground probability from the logit channel (lazy for dask input)."""
    if hasattr(logits, "map_blocks"):
        return logits.map_blocks(sigmoid, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float32)))).astype(np.float32)


def result_layer(data, kind: str, image_name: str, where: dict, **extra) -> tuple:
    """One layer data tuple of ``kind`` (see :data:`KINDS`)."""
    layer_type, style = KINDS[kind]
    if data.dtype == bool:  # tile borders and grid lines: show as 0/1 intensities
        data = data.astype(np.uint8)
    kwargs = {**style, **where, "name": layer_name(image_name, kind), **extra}
    if layer_type == "image" and kind != "embeddings" and "contrast_limits" not in kwargs:
        kwargs["contrast_limits"] = _contrast(data, kind)
    return data, kwargs, layer_type


#: Contrast limits of lazy results, which are never computed just to pick a colour range.
LAZY_LIMITS = {"tile_boundaries": (0, 1), "grid": (0, 1), "seams": (0, 4)}


def _contrast(data, kind: str) -> tuple[float, float]:
    """Data range of an in-memory result; fixed limits for a lazy one."""
    if hasattr(data, "compute"):
        return LAZY_LIMITS.get(kind, (0, 1))
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 1.0)
    return (low, high) if high > low else (low, low + 1.0)


def resampled_placement(where: dict, origin, resampled) -> dict:
    """Placement of a result on a resampled image's grid (see ``inference.results.Resampled``), given
    the image's own ``where`` for a crop starting at ``origin`` (None: the whole image).

    Pixel j of the resampled image has its centre at image coordinate (j + 0.5)·r − 0.5 with
    r = image size / resampled size per axis (as ``rescale`` samples it).
    """
    scale, translate = where["scale"], where["translate"]
    origin = origin or (0,) * len(scale)
    base = [t - o * s for t, o, s in zip(translate, origin, scale)]
    ratio = [n / m for n, m in zip(resampled.image_shape, resampled.working_shape)]
    return {"scale": tuple(s * r for s, r in zip(scale, ratio)),
            "translate": tuple(b + s * ((o + 0.5) * r - 0.5)
                               for b, s, o, r in zip(base, scale, resampled.origin, ratio))}


def segmentation_layers(result, image_name: str, where: dict, embed_dim: int,
                        capacity: int | None = None) -> list[tuple]:
    """All layers of a segmentation run (see :class:`~napari_shiftseg.inference.results.SegmentResult`).

    Instances are on the image's grid; embeddings and diagnostics on the grid the network ran
    on (see :func:`network_layer`), which differs when the image was resampled.
    """
    emb = result.embeddings
    layers = [network_layer(embeddings_to_rgb(emb[:embed_dim]), "embeddings", image_name, result, where)]
    if emb.shape[0] > embed_dim:
        layers.append(network_layer(sigmoid(emb[embed_dim]), "foreground", image_name, result, where))
    layers.append(result_layer(result.labels, "instances", image_name, where))
    if getattr(result, "clusters", None) is not None:
        layers.append(network_layer(result.clusters, "clusters", image_name, result, where))
    for kind, data in result.diagnostics.items():
        extra = {"contrast_limits": (0, capacity - 1)} if kind == "phase" and capacity else {}
        layers.append(network_layer(data, kind, image_name, result, where, **extra))
    return layers


def network_placement(result, where: dict) -> dict:
    """Placement of what is on the grid the network ran on (embeddings, clusters, diagnostics)."""
    resampled = getattr(result, "resampled", None)
    return where if resampled is None else resampled_placement(where, result.origin, resampled)


def shown_on_image_grid(result) -> bool:
    """Whether the network-grid layers of ``result`` are shown on the image's own pixels: for a
    resampled image with a slider axis (three axes or more; see the module docstring)."""
    resampled = getattr(result, "resampled", None)
    return resampled is not None and len(resampled.image_shape) > 2


def network_layer(data, kind: str, image_name: str, result, where: dict, **extra) -> tuple:
    """A layer of ``data`` (spatial axes first) on the grid the network ran on: placed over the
    image, or read back on the image's pixels (:func:`shown_on_image_grid`)."""
    if shown_on_image_grid(result):
        return result_layer(to_image_grid(data, result, kind), kind, image_name, where, **extra)
    return result_layer(data, kind, image_name, network_placement(result, where), **extra)


#: Kinds read back on the image's pixels as the maximum over the network voxels each pixel
#: holds, so that one-voxel lines and seam jumps do not fall between the sampled voxels. The
#: others take the nearest voxel, as the instances do.
MAX_KINDS = ("tile_boundaries", "grid", "seams")


def to_image_grid(data, result, kind: str):
    """``data`` (on the resampled part ``result.resampled`` describes, spatial axes first) on
    the image pixels the result's labels cover. Lazy arrays stay lazy (nearest voxel)."""
    r = result.resampled
    origin = result.origin or (0,) * len(r.image_shape)
    lazy = hasattr(data, "map_blocks")
    out = data
    for axis, (n_w, n_i, w0, i0, n) in enumerate(zip(r.working_shape, r.image_shape, r.origin,
                                                     origin, result.labels.shape)):
        part = out.shape[axis]
        if kind in MAX_KINDS and n_w > n_i and not lazy:
            # Image pixel i holds the network voxels whose centres fall in it: from the first
            # voxel j with (j + 0.5) · n_i / n_w ≥ i on.
            bounds = np.ceil(np.arange(i0, i0 + n + 1) * (n_w / n_i) - 0.5).astype(np.int64) - w0
            starts = np.clip(bounds[:-1], 0, part - 1)
            stop = max(int(np.clip(bounds[-1], 0, part)), int(starts[-1]) + 1)
            head = np.asarray(out)[(slice(None),) * axis + (slice(0, stop),)]
            out = np.maximum.reduceat(head, starts, axis=axis)
        else:
            index = np.clip(rescale.nearest_index(n_w, n_i, i0, i0 + n) - w0, 0, part - 1)
            out = out.take(index, axis=axis) if not lazy else _lazy_take(out, index, axis)
    return out


def _lazy_take(data, index, axis: int):
    import dask.array as da

    return da.take(data, index, axis=axis)


def diagnostic_layers(diagnostics: dict, image_name: str, where: dict,
                      capacity: int | None = None) -> list[tuple]:
    """Layers for ``{kind: array}`` with kinds among tile_boundaries, seams, grid, phase."""
    return [result_layer(data, kind, image_name, where,
                         **({"contrast_limits": (0, capacity - 1)} if kind == "phase" and capacity else {}))
            for kind, data in diagnostics.items()]


def show_layers(viewer, layer_tuples: list[tuple]) -> list:
    """Add each layer, or update the existing layer of the same name in place.

    Updating in place keeps the user's layer order, visibility and colours across reruns, and
    is much cheaper than removing a layer (napari runs a full garbage collection then). A layer
    asked for with ``visible=True`` (what a button that shows a map asks) is shown, also when
    it was there, hidden, already.
    """
    shown = []
    for data, kwargs, layer_type in layer_tuples:
        name = kwargs["name"]
        old = viewer.layers[name] if name in viewer.layers else None
        # ``__class__``, not ``type()``: plugins get layers wrapped in napari's PublicOnlyProxy.
        same_kind = old is not None and old.__class__.__name__.lower() == layer_type and (
            getattr(old, "rgb", False) == kwargs.get("rgb", False)) and old.ndim == _layer_ndim(data, kwargs)
        if old is not None and same_kind:
            old.data = data
            old.scale, old.translate = kwargs["scale"], kwargs["translate"]
            if "contrast_limits" in kwargs:
                old.contrast_limits = kwargs["contrast_limits"]
            if "features" in kwargs:
                old.features = kwargs["features"]
            if kwargs.get("visible") is True:
                old.visible = True
            shown.append(old)
            continue
        if old is not None:
            viewer.layers.remove(old)
        shown.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return shown


def _layer_ndim(data, kwargs) -> int:
    return data.ndim - 1 if kwargs.get("rgb") else data.ndim
