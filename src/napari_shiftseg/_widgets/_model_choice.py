"""Model picker shared by the Segment and Inspect widgets.

A combo box of the bundled defaults (2D, 3D) plus every model file opened in this session (file
picker, the .safetensors reader, or the Train widget), and one line describing the chosen
network: d, l, f, f^l, capacity f^(d·l) and context. Only the metadata is read here (cheap);
the weights are loaded by the job that needs them, in a worker thread. The segmentation settings
recorded in the file come from :meth:`SegmentationSettings.of` (their one owner), never from
fallbacks of our own.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label
from napari.utils.notifications import show_error

from ..network.modelio import bundled_model_path, read_metadata
from ..network.settings import SegmentationSettings
from ..util._errors import ShiftSegError
from ._common import file_stamp

#: Bundled models shown first: the nuclei defaults, then the paper's disk models. Keys are
#: ``bundled:<ndim>`` (nuclei) and ``bundled:disks:<ndim>``.
BUNDLED = {"nuclei 2D (default)": "bundled:2", "nuclei 3D (default)": "bundled:3",
           "disks 2D (paper demos)": "bundled:disks:2", "disks 3D (paper demos)": "bundled:disks:3"}


#: Layer metadata under which a layer names the bundled model it is meant for, and why: the
#: paper-demo samples (_sample_data.py), ``{"model": "bundled:disks:2", "why": "..."}``.
METADATA_KEY = "shiftseg"


def layer_model(layer) -> tuple[str, str] | None:
    """(bundled model key, why) that ``layer``'s metadata asks for, or None."""
    wanted = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY)
    if not isinstance(wanted, dict) or wanted.get("model") not in BUNDLED.values():
        return None
    return wanted["model"], str(wanted.get("why", ""))


def describe_config(config) -> str:
    """One line: the numbers of THEORY.md for this network."""
    g = config.geometry
    if g.isotropic:
        pooling = f"f={g.factor}  f^l={g.grid}  capacity f^(d·l)={g.capacity}  context={g.context}"
    else:  # anisotropic: the per-axis numbers
        pooling = f"factors={g.factors}  F={g.grids}  capacity ∏F={g.capacity}  context={g.contexts}"
    return (f"d={g.ndim}  l={g.levels}  {pooling}  E={config.embed_dim}  "
            f"({config.upsampling} upsampling, {g.padding})")


class ModelChooser(Container):
    """Bundled or file model, with its geometry shown; ``changed`` fires on a new choice."""

    def __init__(self):
        self._files: list[str] = []
        self._metadata: dict[tuple[str, float], dict] = {}
        self._asked: tuple[str, str] | None = None  # (choice a layer asked for, choice before)
        self.choice = ComboBox(label="model", choices=self._choices)
        self.file = FileEdit(label="model file", filter="*.safetensors", mode="r")
        self.summary = Label(label="network")
        super().__init__(widgets=[self.choice, self.file, self.summary], labels=True)
        self.summary.native.setWordWrap(True)
        self.choice.changed.connect(self._refresh)
        self.file.changed.connect(self._file_picked)
        self._refresh()

    def _choices(self, _widget=None):
        return list(BUNDLED.items()) + [
            (Path(p).name, p) for p in self._files]

    # ---- public ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        key = self.choice.value
        if key.startswith("bundled:"):
            parts = key.split(":")
            return bundled_model_path(int(parts[-1]), parts[1] if len(parts) == 3 else "nuclei")
        return Path(key)

    def metadata(self) -> dict:
        """Config and meta of the chosen model; raises ShiftSegError if it cannot be read."""
        path = self.path
        stamp = (str(path), *file_stamp(path))
        if stamp not in self._metadata:
            self._metadata[stamp] = read_metadata(path)
        return self._metadata[stamp]

    def settings(self) -> SegmentationSettings:
        """Segmentation settings recorded in the chosen model; raises ShiftSegError if unreadable."""
        return self.metadata().settings()

    @property
    def geometry(self):
        """Geometry of the chosen model, or None when it cannot be read."""
        try:
            return self.metadata().config.geometry
        except ShiftSegError:
            return None

    @property
    def in_channels(self) -> int:
        """Input channels of the chosen model (1 when it cannot be read)."""
        try:
            return int(self.metadata().config.in_channels)
        except ShiftSegError:
            return 1

    def select_file(self, path) -> bool:
        """Add a model file and select it; show an error (keeping the old choice) if it is bad."""
        path = str(Path(path).resolve())
        try:
            read_metadata(path)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return False
        if path not in self._files:
            self._files.append(path)
        self.choice.reset_choices()
        self.choice.value = path
        self._refresh()
        return True

    def match_ndim(self, ndim: int) -> None:
        """Switch between the bundled defaults to follow the image's dimensionality."""
        value = self.choice.value
        if value.startswith("bundled:") and ndim in (2, 3):
            self.choice.value = f"{value.rsplit(':', 1)[0]}:{ndim}"

    def follow_layer(self, layer) -> str:
        """Follow an image layer (Segment, Inspect and Sweep alike): the bundled model its
        metadata asks for (the paper-demo samples), else the bundled model of its
        dimensionality. A model file the user chose stays chosen. Returns what to tell the
        user ("" when nothing)."""
        wanted = layer_model(layer)
        if self._asked is not None and self.choice.value == self._asked[0] and (
                wanted is None or wanted[0] != self._asked[0]):
            self.choice.value = self._asked[1]  # the choice before that layer asked for another
        self._asked = None
        if wanted is not None:
            key, why = wanted
            name = next(n for n, k in BUNDLED.items() if k == key)
            if not self.choice.value.startswith("bundled:"):
                return f"{layer.name}: {why}; choose the model '{name}' to see it"
            if self.choice.value != key:
                self._asked = (key, self.choice.value)
                self.choice.value = key
            return f"model '{name}' chosen for {layer.name}: {why}"
        if layer is not None and not getattr(layer, "multiscale", False) and not getattr(layer, "rgb", False):
            self.match_ndim(getattr(layer.data, "ndim", 0))
        return ""

    # ---- callbacks ---------------------------------------------------------------------
    def _file_picked(self, value) -> None:
        if value and Path(value).is_file():
            self.select_file(value)

    def _refresh(self, *_):
        if self._asked is not None and self.choice.value != self._asked[0]:
            self._asked = None  # the user chose another model since: theirs stays
        try:
            self.summary.value = describe_config(self.metadata().config)
        except ShiftSegError as err:
            self.summary.value = f"not available: {err}"
