"""The Segment widget's settings controls, and what they mean for a run.

Tile (snapped live to n·f^l, with the input window it needs), device, stitching mode, the
layer's extra axis, object diameter, isotropic resampling and the segmentation settings. The
settings are those the chosen model file records (:meth:`SegmentationSettings.of`, tuned at the
end of training), put into the controls whenever a model is chosen; what the user edits there
is passed on as one :class:`SegmentationSettings`, inside one
:class:`~napari_shiftseg.inference.segment_options.SegmentOptions`.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, SpinBox
from napari.utils.notifications import show_error

from ..imaging import rescale
from ..inference.segment_options import SegmentOptions
from ..inference.session import MODES
from ..network.settings import SegmentationSettings
from ..network.tiling import tile_for
from ..util._errors import ShiftSegError
from . import _axes, _inspect_jobs
from ._common import device_choice


class SegmentControls(Container):
    """The controls between the model and the buttons; ``layer()`` gives the chosen image layer."""

    #: The controls, also attributes of the Segment widget (its public API).
    NAMES = ("tile", "tile_info", "device", "mode", "extra_axis", "extra_index", "channels",
             "diameter", "isotropic", "bandwidth", "fg_threshold", "min_size", "merge_distance",
             "absorb_small", "fill_holes")

    def __init__(self, settings, model, layer):
        self._model, self._layer = model, layer
        self.tile = SpinBox(label="output tile", value=settings.tile_size, min=0, max=4096)
        # 0 shows "auto": the largest n·f^l tile that fits the device's memory (devices.auto_tile).
        self.tile.native.setSpecialValueText("auto")
        self.tile_info = Label(label="tile")
        self.tile_info.native.setWordWrap(True)
        self.device = device_choice(settings)
        self.mode = ComboBox(label="stitching", choices=list(MODES), value="exact")
        # A layer with one axis more than the model: z (slice by slice), time or channels.
        self.extra_axis = ComboBox(label="extra axis", choices=self.extra_choices)
        self.extra_index = SpinBox(label="channel", value=0, min=0, max=2**31 - 1)
        # A multi-channel model: which of the layer's channels it takes, in its order.
        self.channels = LineEdit(label="channels", value="")
        self.channels.tooltip = "e.g. 0,2 (blank: the first ones, as many as the model takes)"
        # cellpose's "diameter": 0 shows "auto" (estimated by a first pass); the image is
        # resampled to the object size the model learnt (rescale.py).
        self.diameter = FloatSpinBox(label="object diameter (px)", value=0.0, min=0.0, max=10000.0,
                                     step=1.0)
        self.diameter.native.setSpecialValueText("auto")
        self.isotropic = CheckBox(value=True, text="resample to isotropic voxels (the layer's scale)")
        self.isotropic.tooltip = ("for stacks whose z step is larger than the pixel size: a 3D "
                                  "model sees cubic voxels (on by default; nothing changes for a "
                                  "layer whose scale is cubic); labels stay on the layer's grid")
        # Values come from the model (use_model_settings); the ranges only need to hold
        # anything SegmentationSettings accepts.
        self.bandwidth = FloatSpinBox(label="bandwidth", min=0.001, max=1000.0, step=0.1)
        self.fg_threshold = FloatSpinBox(label="foreground threshold", min=0.001, max=0.999, step=0.05)
        self.min_size = SpinBox(label="min size (voxels)", min=0, max=2**31 - 1)
        self.merge_distance = FloatSpinBox(label="merge fragments closer than", min=0.0,
                                           max=1000.0, step=0.1)
        self.absorb_small = CheckBox(text="absorb small fragments")
        self.fill_holes = CheckBox(text="fill holes")
        post = Container(widgets=[self.absorb_small, self.fill_holes], layout="horizontal",
                         labels=False)
        for box in (self.bandwidth, self.fg_threshold, self.merge_distance):
            box.native.setDecimals(3)  # tuned values have three decimals
        self.merge_distance.tooltip = "embedding distance; 0 = off"
        super().__init__(widgets=[getattr(self, n) for n in self.NAMES[:-2]] + [post])
        self.margins = (0, 0, 0, 0)
        for signal in (model.choice.changed, self.tile.changed, self.mode.changed):
            signal.connect(self.update_tile_info)
        model.choice.changed.connect(self.use_model_settings)
        model.choice.changed.connect(self.update_extra_axis)
        self.extra_axis.changed.connect(self.update_extra_axis)

    def settings(self) -> SegmentationSettings:
        """The segmentation settings in the controls (the model's, as edited by the user)."""
        return SegmentationSettings(
            bandwidth=self.bandwidth.value, fg_threshold=self.fg_threshold.value,
            min_size=self.min_size.value, merge_distance=self.merge_distance.value,
            absorb_small=self.absorb_small.value, fill_holes=self.fill_holes.value)

    def params(self) -> SegmentOptions:
        """Everything a run takes from the controls."""
        return SegmentOptions(settings=self.settings(), tile=self.tile_request(), device=self.device.value,
                              mode=self.mode.value, diameter=self.diameter.value or "auto",
                              voxel_size=self.voxel_size())

    def voxel_size(self) -> tuple | None:
        """The layer's scale on the model's axes, when isotropic resampling is asked for."""
        layer, g = self._layer(), self._model.geometry
        if not self.isotropic.value or layer is None or g is None:
            return None
        scale, _ = _axes.model_axes(layer.scale, layer.translate, self.extra_axis.value,
                                    bool(getattr(layer, "rgb", False)))
        return tuple(float(v) for v in scale)[-g.ndim:]

    def tile_request(self) -> int | tuple | str:
        """The n·f^l tile in exact mode; naive and blend use the request as given (on purpose);
        "auto" for the largest tile that fits the device."""
        g = self._model.geometry
        requested = "auto" if self.tile.value == 0 else self.tile.value  # auto: decided in the worker
        return tile_for(g, requested, self.mode.value) if g is not None else requested

    def extra_choices(self, _widget=None) -> list[str]:
        """What the image layer's extra axis can be for the chosen model (a callable, so that
        magicgui keeps the user's choice when layers come and go)."""
        layer, g = self._layer(), self._model.geometry
        if layer is None or g is None:
            return [_axes.NONE]
        return _axes.choices(layer.ndim, bool(getattr(layer, "rgb", False)), g.ndim,
                             self._model.in_channels) or [_axes.NONE]

    def update_extra_axis(self, *_) -> None:
        """Offer what the layer's extra axis can be; hidden when it has none."""
        self.extra_axis.reset_choices()
        self.extra_axis.visible = list(self.extra_axis.choices) != [_axes.NONE]
        self.extra_index.visible = self.extra_axis.value == _axes.CHANNEL
        self.channels.visible = self.extra_axis.value == _axes.CHANNELS

    def use_model_settings(self, *_) -> None:
        """Put the settings recorded in the model file (tuned for its embeddings) into the controls."""
        model = self._model
        try:
            settings = model.settings()
            learnt = rescale.model_diameter(model.metadata().meta)
        except ShiftSegError:
            return  # an unreadable model is reported by the tile info line, and cannot run
        self.diameter.enabled = bool(learnt)
        self.diameter.tooltip = (
            f"diameter of the objects in this image; the model learnt ~{learnt:g} px and the image "
            "is resampled to that size ('auto': estimated by a first pass)" if learnt else
            "this model records no object size: images are segmented as imaged")
        for name, value in settings.to_meta().items():
            try:
                getattr(self, name).value = value
            except ValueError:  # beyond a control's range: say so rather than run with another
                show_error(f"shiftseg: {model.path.name} records {name} = {value}, outside "
                           f"{getattr(self, name).range}; set it by hand")

    def update_tile_info(self, *_) -> None:
        g = self._model.geometry
        if g is None:
            self.tile_info.value = "choose a readable model"
            return
        self.tile_info.value = _inspect_jobs.describe_tile(g, self.tile.value, self.mode.value)
