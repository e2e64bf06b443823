"""OME-Zarr (NGFF) layout of ``shiftseg segment`` outputs: readable by napari-ome-zarr,
Fiji/MoBIE, webKnossos and neuroglancer, without changing what shiftseg's own code reads.

Layout of ``OUT.zarr`` (NGFF 0.5 on zarr v3 by default; 0.4 on zarr v2 for older readers)::

    OUT.zarr/                 image group: ``multiscales`` -> image/0 (axes [c,] [z,] y, x)
      image/0                 the input that was segmented (the channel, or the channels, the
                              model took), on the input's grid, in its own data type
      labels/                 ``labels: ["instances"]``
        instances/            label image: ``image-label`` + its own ``multiscales``
          0                   int32 instances, on the input image's grid
      embeddings              (E [+1 foreground logit], *network grid) float32
      foreground, labels_resampled, done
                              plain arrays that shiftseg reads and NGFF readers ignore

**Why the input is the image.** A generic NGFF viewer shows an OME-Zarr's multiscale image
and offers its label images over it: napari-ome-zarr adds the image layer and the
``instances`` labels layer, MoBIE opens the image as a source with its segmentation,
neuroglancer takes the image group as an image layer and ``labels/instances`` as a
segmentation layer. Each expects the image to be the data that was segmented, as it was
imaged, with the labels on the same grid: then the labels outline the nuclei the user sees.
The embeddings are the network's internal output (E channels of positions, often on a
resampled grid): shown as the image they mislead every such viewer (their contrast means
nothing to a user, and napari-ome-zarr opens each channel as a layer of its own), so they stay
plain arrays for shiftseg's own reader and relabelling. The image sits one level down, at
``image/0`` (a nested dataset path is plain NGFF; ngff-zarr writes ``scale0/image``): napari's
built-in zarr reader, which ``viewer.open(path)`` uses unless a plugin is named, opens the first
subgroup of a zarr folder in sorted order, and ``image`` sorts before ``labels``, so it shows
the input instead of failing on the arrayless ``labels`` group. The input is copied into the
output once all tiles are done (:func:`napari_shiftseg.inference.segment.segment_to_zarr`), chunk by
chunk: it adds the input's size, a fraction of the embeddings' (E + 1 float32 per voxel).

Each ``multiscales`` has one level and a ``scale`` transformation in the input's voxel units
(read from its ImageJ/OME metadata). shiftseg's own record (``attrs["shiftseg"]``) stays at
the root. Outputs written before this layout (the embeddings as the NGFF image, the input only
named by its path) are still read by shiftseg's own code.

Written by hand rather than with ome-zarr-py or ngff-zarr: the metadata is a few dictionaries,
while both writers want to own the arrays (shiftseg writes tiles into them as they finish, and
resumes), and either would add a dependency chain (ome-zarr-py pulls aiohttp/requests) to the
headless core. The tests validate the result with ``ome-zarr-models``.

A time series (:mod:`napari_shiftseg.inference.series`) has the same layout with a ``t`` axis first in
every axis list.
"""

from __future__ import annotations

from typing import Any, Literal

from ..util._errors import ShiftSegError

#: Where the instance labels live, relative to the output group.
LABELS = "labels/instances/0"
#: Where the segmented input lives, relative to the output group: the NGFF image's one level.
IMAGE = "image/0"
VERSIONS = ("0.5", "0.4")
AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}
#: Units a file may name, mapped to NGFF (UDUNITS-2) names.
UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
         "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
         "mm": "millimeter", "millimeter": "millimeter", "m": "meter", "meter": "meter",
         "\u03bcm": "micrometer"}  # the Greek mu, besides the micro sign above


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ShiftSegError(f"OME-Zarr version must be one of {', '.join(VERSIONS)}, got {version!r}")
    return version


def zarr_format(version: str) -> Literal[2, 3]:
    """NGFF 0.5 is zarr v3, 0.4 zarr v2."""
    return 3 if check_version(version) == "0.5" else 2


def _axes(spatial_ndim: int, unit: str | None, channel: bool, time: bool = False) -> list[dict]:
    """NGFF axes in the order the spec requires: time, channel, then space."""
    ngff_unit = UNITS.get(unit or "")
    axes = [{"name": "t", "type": "time"}] if time else []
    axes += [{"name": "c", "type": "channel"}] if channel else []
    for name in AXIS_NAMES[spatial_ndim]:
        axes.append({"name": name, "type": "space", **({"unit": ngff_unit} if ngff_unit else {})})
    return axes


def _multiscales(name: str, path: str, axes: list[dict], scale, version: str) -> list[dict]:
    entry = {"name": name, "axes": axes,
             "datasets": [{"path": path, "coordinateTransformations": [
                 {"type": "scale", "scale": [float(s) for s in scale]}]}]}
    if version == "0.4":
        entry = {"version": "0.4", **entry}
    return [entry]


def _set(group, version: str, **values) -> None:
    """Put NGFF keys where each version wants them: under ``ome`` (0.5) or at the top (0.4)."""
    if version == "0.5":
        ome = dict(group.attrs.get("ome") or {})
        ome.update({"version": "0.5", **values})
        group.attrs["ome"] = ome
    else:
        for key, value in values.items():
            group.attrs[key] = value


def write_metadata(group, version: str, *, voxel_size=None, unit: str | None = None,
                   channel: bool = False, time: bool = False) -> None:
    """Make ``group`` (an output holding :data:`IMAGE` and :data:`LABELS`) an OME-Zarr image,
    the segmented input, with one label image, ``instances``.

    ``voxel_size``: the input's voxel size per spatial axis (1 each when unknown); ``channel``:
    the image has a channel axis (a multi-channel model's input); ``time``: every axis list
    starts with ``t`` (a time series; scale 1: one time point per step).
    """
    check_version(version)
    spatial = group[LABELS].ndim - time
    voxel = [float(v) for v in (voxel_size or (1.0,) * spatial)]
    lead = [1.0] * time
    _set(group, version, multiscales=_multiscales(
        "image", IMAGE, _axes(spatial, unit, channel=channel, time=time),
        lead + [1.0] * channel + voxel, version))
    _write_label_image(group, version, _axes(spatial, unit, channel=False, time=time), lead + voxel)


def _write_label_image(group, version: str, axes: list[dict], scale) -> None:
    """``labels/instances``: the one label image of ``group``, its source the image above."""
    _set(group["labels"], version, labels=["instances"])
    image_label: dict[str, Any] = {"source": {"image": "../../"}}
    if version == "0.4":
        image_label = {"version": "0.4", **image_label}
    _set(group["labels/instances"], version, **{"image-label": image_label},
         multiscales=_multiscales("instances", "0", axes, scale, version))


def dimension_names(spatial_ndim: int, channel: bool = False, time: bool = False) -> tuple[str, ...]:
    """zarr v3 ``dimension_names`` of an array with these axes (the names its NGFF axes use)."""
    return ("t",) * time + ("c",) * channel + AXIS_NAMES[spatial_ndim]


def create_array(group, version: str, name: str, shape, chunks, dtype, fill=0, names=None):
    """The array ``name`` of an output, stored as NGFF ``version`` asks: nested chunk keys on
    zarr v2 (0.4, as zarr v3 always has) and, on 0.5, the axis names ``names`` (zarr v3
    ``dimension_names``, as its NGFF axes; None for an array no NGFF metadata describes)."""
    keys: dict[str, Any] = {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if version == "0.4" else {}
    if version != "0.4" and names is not None:
        keys["dimension_names"] = tuple(names)
    return group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
                              fill_value=fill, **keys)


def image_source(image, chunks):
    """``image`` (numpy, memory map, zarr or dask) as a dask array of ``chunks`` (-1: the whole
    axis) in native byte order, the way zarr stores it: storing it into an :data:`IMAGE` array
    reads and writes one chunk at a time, never the whole image."""
    import dask.array as da
    import numpy as np

    source = image if isinstance(image, da.Array) else da.from_array(
        image, chunks=chunks, asarray=True, name=False)
    return source.rechunk(chunks).astype(np.dtype(source.dtype).newbyteorder("="))
