"""The Train widget's network controls: a new network's geometry and head, and the window.

d, l, f, upsampling, padding, base channels and the embedding head (defaults:
``train.network_defaults``, as ``shiftseg train``), then the training window. What they imply
(f^l, capacity, context, the valid input sizes, the window's input crop, and a warning when the
window is not larger than f^l) is shown live by :func:`._train_jobs.describe_geometry`.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, SpinBox

from ..network.geometry import UNetGeometry
from ..network.spatial import EMBEDDINGS
from ..network.unet import UNetConfig
from ..training.train import NETWORK_DEFAULTS, network_config, network_defaults
from ..util._errors import ShiftSegError
from ._common import wrap
from ._train_jobs import describe_geometry

WARN_STYLE = "color: #e8a33d;"


class NetworkControls(Container):
    """The controls between "start from" and the training options."""

    #: The controls, also attributes of the Train widget (its public API).
    NAMES = ("ndim", "levels", "factor", "upsampling", "padding", "channels", "embedding",
             "position_scale", "window", "auto_window", "geometry_info", "warning", "allow_small")
    #: What a continued model brings itself: off unless a new network is trained.
    NETWORK = ("levels", "factor", "upsampling", "padding", "channels", "embedding", "position_scale")
    #: What the sizes line depends on.
    GEOMETRY = ("ndim", "levels", "factor", "padding", "window", "allow_small", "auto_window")

    def __init__(self):
        self.ndim = ComboBox(label="d (dimensions)", choices=[2, 3], value=2)
        self.levels = SpinBox(label="l (levels)", value=NETWORK_DEFAULTS["levels"], min=1, max=5)
        self.factor = SpinBox(label="f (pooling)", value=NETWORK_DEFAULTS["factor"], min=2, max=4)
        self.upsampling = ComboBox(label="upsampling", choices=["learnt", "nearest"],
                                   value=NETWORK_DEFAULTS["upsampling"])
        self.padding = ComboBox(label="padding", choices=["valid", "same"], value=NETWORK_DEFAULTS["padding"])
        self.channels = SpinBox(label="base channels", value=NETWORK_DEFAULTS["base_channels"], min=1, max=128)
        self.embedding = ComboBox(label="embedding head", choices=list(EMBEDDINGS),
                                  value=NETWORK_DEFAULTS["embedding"])
        self.embedding.tooltip = ("spatial: position + predicted offset (no capacity limit); "
                                  "free: the paper's embeddings")
        self.position_scale = FloatSpinBox(label="position scale", min=0.001, max=10.0, step=0.05,
                                           value=NETWORK_DEFAULTS["position_scale"])
        self.position_scale.tooltip = "embedding units per pixel added to the spatial embedding"
        self.window = SpinBox(label="training window", value=32, min=1, max=1024)
        # On: train.train sizes the window to the objects; typing a window switches it off.
        self.auto_window = CheckBox(text="size the window to the objects", value=True)
        self.geometry_info = Label(label="sizes")
        self.warning = Label(label="")
        self.allow_small = CheckBox(text="allow window ≤ f^l (reproduces seams)", value=False)
        super().__init__(widgets=[getattr(self, n) for n in self.NAMES])
        self.margins = (0, 0, 0, 0)
        self.warning.native.setStyleSheet(WARN_STYLE)
        wrap(self.warning, self.geometry_info)
        self.window.changed.connect(self._window_typed)
        self.embedding.changed.connect(self._embedding_changed)
        self.ndim.changed.connect(self._ndim_changed)
        self._embedding_changed()

    def geometry(self) -> UNetGeometry:
        return UNetGeometry(ndim=self.ndim.value, levels=self.levels.value, factor=self.factor.value,
                            padding=self.padding.value)

    def config(self) -> UNetConfig:
        """The network ``shiftseg train`` would build with these options (one owner)."""
        return network_config(self.ndim.value, levels=self.levels.value, factor=self.factor.value,
                              padding=self.padding.value, upsampling=self.upsampling.value,
                              base_channels=self.channels.value, embedding=self.embedding.value,
                              position_scale=self.position_scale.value)

    def training_window(self) -> int | None:
        """The window asked for; None = sized to the objects by :func:`train.train`."""
        return None if self.auto_window.value else self.window.value

    def set_new(self, new: bool) -> None:
        """A continued model keeps its own network: its controls are then off."""
        for name in self.NETWORK:
            getattr(self, name).enabled = new

    def update_geometry(self) -> bool | None:
        """Show the sizes and the warning: whether the window may train (not larger than f^l
        only when allowed), or None when the network itself is impossible."""
        try:
            info, warning = describe_geometry(self.geometry(), self.training_window())
        except ShiftSegError as err:
            self.geometry_info.value, self.warning.value = "", str(err)
            return None
        self.geometry_info.value, self.warning.value = info, warning
        return not warning or self.allow_small.value

    def _ndim_changed(self, *_) -> None:
        self.levels.value = network_defaults(self.ndim.value)["levels"]

    def _window_typed(self, *_) -> None:
        self.auto_window.value = False

    def _embedding_changed(self, *_) -> None:
        self.position_scale.visible = self.embedding.value == "spatial"
