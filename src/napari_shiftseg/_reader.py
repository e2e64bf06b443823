"""npe2 readers: shiftseg model files and ``shiftseg segment`` outputs.

Dropping a ``.safetensors`` model on napari (or File > Open) loads it into the Segment widget
instead of adding a layer. A model is not image data, so the reader returns napari's documented
"read, but no layers" sentinel ``[(None,)]`` after handing the file to the widget. The widget
validates the file and shows a one-line error (and keeps its previous model) when it is not a
shiftseg model.

Dropping an ``OUT.zarr`` of ``shiftseg segment`` adds its layers, lazily: the input image it
stores (its OME-Zarr image, :mod:`.ngff`), the embeddings, the foreground and the instances.
Such a folder may come from anywhere: :mod:`._reader_checks` checks it before anything is read,
so that a crafted one gives a one-line error instead of a hang or gigabytes of memory. An output
written before the input was stored in it names the input by its path: when that file has moved
(or changed), the results open without it and the user is told so, naming the path, every time:
a napari warning notification while a viewer is open (napari shows a Python warning's text once
a session, and Python once per line of code), a Python warning otherwise. A time-series output
(:mod:`.series`) opens as the input it stores and its instances, both with the time axis first.

Which reader napari uses (napari 0.5 and later, npe2): ``viewer.open(path)`` reads with napari's
built-in reader unless ``plugin=`` names another, so scripts open an output with
``viewer.open(path, plugin="napari-shiftseg")``. Dropping the folder on the viewer, *File >
Open* and ``napari OUT.zarr`` let napari choose; every reader that accepts folders is offered
every folder (npe2 matches ``filename_patterns`` against files only), napari's built-in one
among them, so napari asks which one to use unless a preference is saved. This reader takes a
folder only when its root metadata carries shiftseg's record, and returns None (not ours)
otherwise.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .files._reader_checks import ArrayInfo

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
    """Return a reader for a ``shiftseg segment`` output (``OUT.zarr``), else None.

    Only the root metadata is read, and safely (a plain, small file; never through a link):
    napari asks every reader about every ``.zarr`` folder dropped on it."""
    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() != ".zarr" or not Path(path).is_dir():
        return None
    from .files._reader_checks import root_attrs
    from .inference.segment import ATTRS, FORMAT
    from .inference.series import SERIES_FORMAT

    record = (root_attrs(path) or {}).get(ATTRS)
    if isinstance(record, dict) and record.get("format") == SERIES_FORMAT:
        return read_series
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None  # not ours: another reader's turn
    return read_segmentation


def read_segmentation(path):
    """Layers of a finished ``shiftseg segment`` output: the input image (the output's copy, or
    for an output written before it stored one, its file when that is still there), embeddings,
    foreground and instances, all placed with the input's voxel size (the network's own grid,
    for a resampled run, placed over the image).

    The folder is checked before anything is read (see :mod:`._reader_checks`): a crafted or
    damaged output raises a one-line :class:`~._errors.ShiftSegError`, never hangs and never
    reads more than a few chunks. An input file that is gone, no longer a plain file, or of
    another size is left out with a warning; the results are shown without it.
    """
    from ._widgets._layers import PCA_SAMPLES, apply_rgb, fit_rgb, layer_name, resampled_placement, sigmoid
    from .files._reader_checks import check_placement, colour_sample

    out = _open_output(Path(path))
    name = out.root.stem
    emb = out.lazy(out.embeddings)
    # A resampled run: the network's grid placed over the image's (one formula, _layers').
    grid = SimpleNamespace(origin=(0,) * out.ndim, working_shape=emb.shape[1:], image_shape=out.labels_shape)
    net = resampled_placement({"scale": out.scale, "translate": (0.0,) * out.ndim}, None, grid)
    check_placement(net, out.root.name)
    layers = _input_layers(out)
    # Colours fitted on a few chunks (as embeddings_to_rgb does on a stride over all of them).
    mapping = fit_rgb(colour_sample(out.guarded(out.embeddings), out.channels, PCA_SAMPLES))
    rgb = emb[:out.channels].rechunk({0: -1})
    rgb = rgb.map_blocks(apply_rgb, mapping, dtype=np.float32, drop_axis=0, new_axis=rgb.ndim - 1,
                         chunks=rgb.chunks[1:] + ((3,),))
    layers.append((rgb, {"name": layer_name(name, "embeddings"), "rgb": True, "opacity": 0.5,
                         "contrast_limits": (0.0, 1.0), **net}, "image"))
    if out.foreground:
        layers.append((sigmoid(emb[out.channels]),
                       {"name": layer_name(name, "foreground"), "colormap": "green",
                        "blending": "additive", "contrast_limits": (0.0, 1.0), "visible": False,
                        **net}, "image"))
    layers.append((out.lazy(out.labels), {"name": layer_name(name, "instances"), "scale": out.scale,
                                          "opacity": 0.6}, "labels"))
    return layers


def read_series(path):
    """Layers of a finished time-series output (:mod:`.series`): the input it stores and the
    instances, both with the time axis first (napari's time slider), placed with the input's
    voxel size. Checked like :func:`read_segmentation` before anything is read."""

    from ._widgets._layers import layer_name
    from .files import _reader_checks as checks
    from .files.ngff import IMAGE, LABELS
    from .inference.series import SERIES_FORMAT

    root = Path(path)
    name = root.name
    group, info = checks.open_output(root, name, SERIES_FORMAT,
                                     f"{name} is not a shiftseg time-series output; open it with a "
                                     "zarr or OME-Zarr reader instead")
    labels = checks.check_array(group, LABELS, "instances", name)
    checks.check_labels_dtype(labels.array.dtype, name)
    if labels.array.ndim not in (3, 4):
        raise checks.damaged(name, f"the instances have {labels.array.ndim} axes; a time series "
                                   "has time and 2 or 3 spatial axes")
    image, channels = checks.check_image(group, IMAGE, labels.array.shape, name, time=True)
    scale = (1.0, *checks.check_voxel_size(info.get("voxel_size"), labels.array.ndim - 1, name))
    return [(_lazy(image, root), {"name": layer_name(name, "image"), "scale": scale,
                                  **({"channel_axis": 1} if channels else {})}, "image"),
            (_lazy(labels, root), {"name": layer_name(name, "instances"), "scale": scale,
                                   "opacity": 0.6}, "labels")]


def _lazy(array: ArrayInfo, root: Path):
    """A dask array over ``array`` whose every chunk read is checked first."""
    import dask.array as da

    from .files._reader_checks import GuardedArray

    guarded = GuardedArray(array, root, root.name)
    return da.from_array(guarded, chunks=guarded.chunks, asarray=False, fancy=False, name=False,
                         meta=np.empty((0,) * guarded.ndim, guarded.dtype))


@dataclass(frozen=True)
class _Output:
    """A checked output: its record, arrays (metadata only so far) and voxel size."""

    root: Path
    info: dict
    labels: ArrayInfo
    embeddings: ArrayInfo
    foreground: bool
    channels: int
    scale: tuple
    image: ArrayInfo | None = None  # the input the output stores (None: named by its path only)
    image_channels: bool = False

    @property
    def ndim(self) -> int:
        return self.labels.array.ndim

    @property
    def labels_shape(self) -> tuple:
        return tuple(self.labels.array.shape)

    def guarded(self, array: ArrayInfo):
        from .files._reader_checks import GuardedArray

        return GuardedArray(array, self.root, self.root.name)

    def lazy(self, array: ArrayInfo):
        """A dask array over ``array`` whose every chunk read is checked first."""
        return _lazy(array, self.root)


def _open_output(root: Path) -> _Output:
    """Check the folder, then its metadata (see :mod:`._reader_checks`), reading no chunk."""

    from .files import _reader_checks as checks
    from .files.ngff import IMAGE, LABELS
    from .inference.segment import FORMAT

    name = root.name
    group, info = checks.open_output(root, name, FORMAT,
                                     f"{name} is not a shiftseg segment output (it has no {FORMAT} "
                                     "record); open it with a zarr or OME-Zarr reader instead")
    try:
        foreground = "foreground" in group
    except Exception as err:  # noqa: BLE001 - zarr's own parse of broken metadata
        raise checks.damaged(name, f"zarr cannot read it ({checks.first_line(err)})") from None
    labels = checks.check_array(group, LABELS, "instances", name)
    checks.check_labels_dtype(labels.array.dtype, name)
    if labels.array.ndim not in (2, 3):
        raise checks.damaged(name, f"the instances have {labels.array.ndim} axes; shiftseg writes 2D or 3D")
    fg = checks.check_array(group, "foreground", "foreground", name) if foreground else None
    emb = checks.check_array(group, "embeddings", "embeddings", name)
    channels = checks.check_embeddings(emb, labels.array.ndim, foreground, name)
    checks.check_grids(labels.array.shape, emb.array.shape[1:], fg.array.shape if fg else None, info, name)
    scale = checks.check_voxel_size(info.get("voxel_size"), labels.array.ndim, name)
    image, several = None, False
    if info.get("input_stored") is True:  # else an output written before the input was stored
        image, several = checks.check_image(group, IMAGE, labels.array.shape, name)
    return _Output(root, dict(info), labels, emb, foreground, channels, scale, image, several)


def _input_layers(out: _Output) -> list:
    """The input image: the output's copy; for an output written before it stored one, the
    file it names, when that can still be shown under the labels (else none, with a warning:
    the results are worth seeing without it)."""
    from ._widgets._layers import layer_name
    from .util._errors import failure_message

    if out.image is not None:
        source = out.info.get("input")
        path = source.get("path") if isinstance(source, dict) else None
        name = Path(path).name if isinstance(path, str) and path else layer_name(out.root.stem, "image")
        return [(out.lazy(out.image), {"name": name, "scale": out.scale,
                                       **({"channel_axis": 0} if out.image_channels else {})}, "image")]
    from .files._reader_checks import input_matches, usable_input
    from .files.io import read_spatial

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = usable_input(out.info.get("input"), out.root.name)
    for warning in caught:  # "the input image ... is not shown: why": told every time
        if issubclass(warning.category, UserWarning) and str(warning.message).startswith(out.root.name):
            _tell(str(warning.message))
        else:
            warnings.warn(warning.message, warning.category, stacklevel=2)
    if source is None:
        return []
    path, channel = source
    several = isinstance(channel, list)  # a multi-channel model's input
    try:
        image = read_spatial(path, channel)
    except Exception as err:  # noqa: BLE001 - the input changed: show the results anyway
        _warn(out, path, failure_message(err) or f"{type(err).__name__}: {err}")
        return []
    if not input_matches(image, out.labels_shape, several):
        _warn(out, path, f"it is now {' x '.join(map(str, image.shape))} voxels, the instances "
                         f"{' x '.join(map(str, out.labels_shape))}")
        return []
    return [(image, {"name": Path(path).name, "scale": out.scale, **({"channel_axis": 0} if several else {})},
             "image")]


def _warn(out: _Output, path: str, why: str) -> None:
    _tell(f"{out.root.name}: the input image {path} is not shown: {why.splitlines()[0] if why else ''}")


def _tell(message: str) -> None:
    """Say that the input image is left out, and what to do, however often the output is opened."""
    message = (f"{message}; the results are shown without it (open the image from where it is "
               "now to see them over it)")
    napari = sys.modules.get("napari")  # never imported here just to ask
    if napari is not None and napari.current_viewer() is not None:
        from napari.utils.notifications import show_warning

        show_warning(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=4)
