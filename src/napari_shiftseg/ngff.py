"""OME-Zarr (NGFF) metadata for ``shiftseg segment`` outputs: readable by napari-ome-zarr,
Fiji/MoBIE, webKnossos and neuroglancer, without changing what shiftseg stores.

Layout of ``OUT.zarr`` (NGFF 0.5 on zarr v3 by default; 0.4 on zarr v2 for older readers)::

    OUT.zarr/                 image group: ``multiscales`` -> the embeddings (axes c, [z,] y, x)
      embeddings              (E [+1 foreground logit], *spatial) float32
      labels/                 ``labels: ["instances"]``
        instances/            label image: ``image-label`` + its own ``multiscales``
          0                   int32 instances, on the input image's grid
      foreground, labels_resampled, done
                              extra arrays NGFF readers ignore (the resume flags among them)

Each ``multiscales`` has one level and a ``scale`` transformation in the input's voxel units
(read from its ImageJ/OME metadata): the embeddings of a resampled run (object size or
isotropic voxels) are on a finer or coarser grid, so their scale is the voxel size times the
resampling. shiftseg's own record (``attrs["shiftseg"]``) stays at the root.

Written by hand rather than with ome-zarr-py or ngff-zarr: the metadata is a few dictionaries,
while both writers want to own the arrays (shiftseg writes tiles into them as they finish, and
resumes), and either would add a dependency chain (ome-zarr-py pulls aiohttp/requests) to the
headless core. The tests validate the result with ``ome-zarr-models``.

A time series (:mod:`napari_shiftseg.series`) is written by :func:`write_series_metadata`: its
image is the segmented input and every axis list starts with a ``time`` axis.
"""

from __future__ import annotations

from typing import Any, Literal

from ._errors import ShiftSegError

#: Where the instance labels live, relative to the output group.
LABELS = "labels/instances/0"
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
                   embedding_scale=None) -> None:
    """Make ``group`` (a shiftseg output with ``embeddings`` and :data:`LABELS`) an OME-Zarr
    image with one label image, ``instances``.

    ``voxel_size``: the input's voxel size per spatial axis (1 each when unknown);
    ``embedding_scale``: the voxel size of the embeddings' grid, when the network ran on a
    resampled image (default: ``voxel_size``).
    """
    check_version(version)
    labels = group[LABELS]
    ndim = labels.ndim
    voxel = [float(v) for v in (voxel_size or (1.0,) * ndim)]
    emb_scale = [float(v) for v in (embedding_scale or voxel)]
    emb_ndim = group["embeddings"].ndim - 1
    # A 2D model run slice by slice on a stack has 3D embeddings: same grid as the labels.
    _set(group, version, multiscales=_multiscales(
        "embeddings", "embeddings", _axes(emb_ndim, unit, channel=True), [1.0, *emb_scale], version))
    _write_label_image(group, version, _axes(ndim, unit, channel=False), voxel)


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


def write_series_metadata(group, version: str, *, image: str, voxel_size=None,
                          unit: str | None = None, channel: bool = False) -> None:
    """Make ``group`` (a time-series output: ``image`` (T, [C,] *spatial) and :data:`LABELS`
    (T, *spatial)) an OME-Zarr image with one label image, ``instances``; every axis list
    starts with ``t`` (scale 1: one time point per step).
    """
    check_version(version)
    labels = group[LABELS]
    spatial = labels.ndim - 1
    voxel = [float(v) for v in (voxel_size or (1.0,) * spatial)]
    _set(group, version, multiscales=_multiscales(
        "image", image, _axes(spatial, unit, channel=channel, time=True),
        [1.0] + [1.0] * channel + voxel, version))
    _write_label_image(group, version, _axes(spatial, unit, channel=False, time=True), [1.0, *voxel])
