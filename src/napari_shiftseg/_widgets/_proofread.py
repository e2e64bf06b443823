"""The Segment widget's proofreading row: split one object, merge several, undo.

Each button is one call into the last run's
:class:`~napari_shiftseg.inference.session.Session`: *Split* re-clusters one object's embeddings
with half the bandwidth; *Merge* joins the ids typed. Both work on the instances layer as it is
now, so hand edits made with napari's label tools are kept; the measurement table follows each
edit. *Undo* takes back the last split or merge (the session's edit history: the box each edit
changed, as it was before). Edits are written with napari's
``Labels.data_setitem``, so napari's own undo of the layer (Ctrl+Z) takes them back as well,
in order with the user's hand edits. A new run or re-cluster (new labels in the layer) starts
a new history.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, LineEdit, PushButton, SpinBox
from napari.utils.notifications import show_error

from ..util._errors import ShiftSegError
from . import _layers


class ProofreadPanel(Container):
    """Split / merge / undo controls; ``owner`` is the Segment widget (its last result and
    settings)."""

    def __init__(self, owner):
        self._owner = owner
        self._edited = None  # the layer data the history's edits were made on
        self.split_id = SpinBox(label="object", value=0, min=0, max=2**31 - 1)
        self.split_id.native.setSpecialValueText("selected label")
        self.split_button = PushButton(text="Split", enabled=False)
        self.merge_ids = LineEdit(label="merge ids", value="")
        self.merge_ids.tooltip = "object ids to merge into one, e.g. 4, 9"
        self.merge_button = PushButton(text="Merge", enabled=False)
        self.undo_button = PushButton(text="Undo", enabled=False)
        self.undo_button.tooltip = "take back the last split or merge"
        super().__init__(widgets=[self.split_id, self.split_button, self.merge_ids, self.merge_button,
                                  self.undo_button], layout="horizontal", labels=True, label="proofread")
        self.split_button.changed.connect(self.split)
        self.merge_button.changed.connect(self.merge)
        self.undo_button.changed.connect(self.undo)

    def set_enabled(self, enabled: bool) -> None:
        self.split_button.enabled = self.merge_button.enabled = enabled
        self.undo_button.enabled = enabled and self._can_undo()

    def _can_undo(self) -> bool:
        try:
            layer = self._instances_layer()  # says why not when there is no session
            return bool(self._owner._session.history) and layer.data is self._edited
        except ShiftSegError:
            return False

    def _instances_layer(self):
        owner = self._owner
        if owner._session is None or owner._result is None or owner._target is None:
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
            self._restart_if_new(layer)
            labels, ids = owner._session.split(object_id, np.asarray(layer.data), bandwidth)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        if len(ids) == 1:
            owner.status.value = (f"object {object_id} has one embedding mode at bandwidth "
                                  f"{bandwidth:g}; lower the bandwidth to split it")
            return
        self._apply(layer, labels)
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
            self._restart_if_new(layer)
            labels, kept = self._owner._session.merge(ids, np.asarray(layer.data))
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        self._apply(layer, labels)
        self._owner.status.value = f"merged {', '.join(map(str, sorted(set(ids))))} into {kept}"

    def undo(self) -> None:
        """Take back the last split or merge."""
        try:
            layer = self._instances_layer()
            if not self._can_undo():
                raise ShiftSegError("nothing to undo since the last run")
            session = self._owner._session
            indices, values = session.undo(layer.data)
        except ShiftSegError as err:
            show_error(f"shiftseg: {err}")
            return
        layer.data_setitem(indices, values)
        self._edited = layer.data
        self._after_edit(layer)
        left = len(session.history)
        self._owner.status.value = "undone" + (f" ({left} more edit(s) to undo)" if left else "")

    def _restart_if_new(self, layer) -> None:
        """New labels in the layer since the last edit (a run, a re-cluster, a new layer): the
        session's history of edits no longer applies to them."""
        if layer.data is not self._edited:
            self._owner._session.history.clear()

    def _apply(self, layer, labels) -> None:
        """Write proofread ``labels`` (the session recorded the edit for undo) into the layer."""
        before = np.asarray(layer.data)
        if labels.dtype == before.dtype:
            changed = np.nonzero(labels != before)
            layer.data_setitem(changed, labels[changed])  # in napari's undo history too
        else:  # a split that needed a wider integer type: a new array
            layer.data = labels
        self._edited = layer.data
        self._after_edit(layer)

    def _after_edit(self, layer) -> None:
        """The cached result and the measurement table follow the layer; Undo's state too."""
        owner = self._owner
        owner._session.result.labels = np.asarray(layer.data)
        layer.features = owner._session.measurements(owner._target[1]["scale"])
        self.undo_button.enabled = self._can_undo()
