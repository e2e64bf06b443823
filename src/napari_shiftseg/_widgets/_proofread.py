"""The Segment widget's proofreading row: split one object, merge several.

*Split* re-clusters one object's embeddings (cached from the last run) with half the bandwidth
(:func:`napari_shiftseg.proofread.split_object`); *Merge* joins the ids typed. Both work on the
instances layer as it is now, so hand edits made with napari's label tools are kept; the
measurement table follows each edit.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, LineEdit, PushButton, SpinBox
from napari.utils.notifications import show_error

from .._errors import ShiftSegError
from ..proofread import merge_objects
from . import _layers, _pipeline


class ProofreadPanel(Container):
    """Split / merge controls; ``owner`` is the Segment widget (its last result and settings)."""

    def __init__(self, owner):
        self._owner = owner
        self.split_id = SpinBox(label="object", value=0, min=0, max=2**31 - 1)
        self.split_id.native.setSpecialValueText("selected label")
        self.split_button = PushButton(text="Split", enabled=False)
        self.merge_ids = LineEdit(label="merge ids", value="")
        self.merge_ids.tooltip = "object ids to merge into one, e.g. 4, 9"
        self.merge_button = PushButton(text="Merge", enabled=False)
        super().__init__(widgets=[self.split_id, self.split_button, self.merge_ids, self.merge_button],
                         layout="horizontal", labels=True, label="proofread")
        self.split_button.changed.connect(self.split)
        self.merge_button.changed.connect(self.merge)

    def set_enabled(self, enabled: bool) -> None:
        self.split_button.enabled = self.merge_button.enabled = enabled

    def _instances_layer(self):
        owner = self._owner
        if owner._result is None or owner._target is None:
            raise ShiftSegError("run Segment first")
        name = _layers.layer_name(owner._target[0], "instances")
        if name not in owner._viewer.layers:
            raise ShiftSegError(f"the layer {name!r} is gone; run Segment again")
        return owner._viewer.layers[name]

    def split(self) -> None:
        """Re-cluster one object (the number given, else the layer's selected label) with half
        the bandwidth; the status line says what happened."""
        owner = self._owner
        bandwidth = owner.bandwidth.value / 2
        try:
            layer = self._instances_layer()
            object_id = self.split_id.value or int(layer.selected_label)
            labels, ids = _pipeline.split(owner._result, np.asarray(layer.data), object_id,
                                          bandwidth, owner.min_size.value)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        if len(ids) == 1:
            owner.status.value = (f"object {object_id} has one embedding mode at bandwidth "
                                  f"{bandwidth:g}; lower the bandwidth to split it")
            return
        self._show(layer, labels)
        owner.status.value = f"split object {object_id} into {', '.join(map(str, ids))}"

    def merge(self) -> None:
        """Merge the objects listed in 'merge ids' into the smallest of them."""
        try:
            layer = self._instances_layer()
            text = self.merge_ids.value.replace(";", ",").replace(" ", ",")
            try:
                ids = [int(v) for v in text.split(",") if v]
            except ValueError:
                raise ShiftSegError(f"merge ids must be whole numbers like 4, 9; got "
                                    f"{self.merge_ids.value!r}") from None
            labels, kept = merge_objects(np.asarray(layer.data), ids)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        self._show(layer, labels)
        self._owner.status.value = f"merged {', '.join(map(str, sorted(set(ids))))} into {kept}"

    def _show(self, layer, labels) -> None:
        """Proofread labels into the layer; the cached result and the table follow."""
        owner = self._owner
        owner._result.labels = labels
        layer.data = labels
        layer.features = _pipeline.object_features(owner._result, owner._source,
                                                   owner._target[1]["scale"])
