"""A model in memory, and what its recorded settings may be.

:class:`Model` is a network with the record of how it was trained (``meta``); :class:`ModelInfo`
is what a file says without its weights. The rules on recorded settings
(:func:`check_recorded_settings`) live here, beside them, so that both file formats use them:
:mod:`napari_shiftseg.network.modelio` (safetensors files) and :mod:`napari_shiftseg.network.bmz` (bioimage.io
packages). Neither of those is imported here: files depend on the model, not the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..util._errors import ShiftSegError
from .unet import UNet, UNetConfig

__all__ = ["Model", "ModelInfo", "ball_voxels", "check_recorded_settings", "refuse_impossible_settings",
           "expected_shapes", "MIN_OBJECT_DIAMETER", "MAX_OBJECT_DIAMETER", "MIN_SIZE_DIAMETERS"]


@dataclass
class Model:
    """A network plus what inference needs to know about how it was trained."""

    net: UNet
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def geometry(self):
        return self.net.config.geometry

    @property
    def name(self) -> str:
        return self.path.name if self.path else "unsaved model"


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says without its weights: the network's config and the training record.

    The segmentation settings have one reader, :meth:`settings` (the values tuned at training
    time, defaults for what the file does not record)."""

    config: UNetConfig
    meta: dict
    version: str | None = None
    name: str = "the model"  # the file's name, for messages

    @property
    def geometry(self):
        return self.config.geometry

    def settings(self):
        """The :class:`~napari_shiftseg.network.settings.SegmentationSettings` the file records."""
        from .settings import SegmentationSettings

        return SegmentationSettings.of(self)


#: Smallest recorded object diameter (px): a single pixel's equivalent diameter is 1.13 (2D) or
#: 1.24 (3D), so no labels can have a smaller median. Below it a model shrinks every image until
#: its nuclei vanish (``object_diameter: 1e-9`` gave 0 objects without a word, issue 25).
MIN_OBJECT_DIAMETER = 1.0
#: Largest recorded object diameter (px): wider than a whole camera frame (sCMOS sensors are at
#: most ~6000 px across), so no nucleus in an image can be this wide.
MAX_OBJECT_DIAMETER = 10_000.0
#: The recorded min_size may be at most the voxels of a ball this many times the recorded object
#: diameter (or :data:`MAX_OBJECT_DIAMETER` where none is recorded): a larger one drops every
#: object (``min_size: 1e30`` gave 0 objects without a word, issue 25). The bundled models keep
#: 1-3 % of that (34 of 1257 px in 2D, 303 of 11494 voxels in 3D); tuning never goes past 35 %
#: of the median object.
MIN_SIZE_DIAMETERS = 2.0


def ball_voxels(diameter: float, ndim: int) -> int:
    """Voxels of a disk (2D) or ball (3D) ``diameter`` pixels across."""
    radius = diameter / 2
    return int(math.pi * radius**2 if ndim == 2 else 4 / 3 * math.pi * radius**3)


def _recorded_diameter(meta: dict) -> float | None:
    value = meta.get("object_diameter")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ShiftSegError(f"object_diameter {value!r} is not a number of pixels")
    if value < MIN_OBJECT_DIAMETER:
        raise ShiftSegError(f"object_diameter {value:g} px is smaller than one pixel, so every image "
                            f"would be shrunk until no nucleus is left; it must be "
                            f"{MIN_OBJECT_DIAMETER:g}-{MAX_OBJECT_DIAMETER:g} px")
    if value > MAX_OBJECT_DIAMETER:
        raise ShiftSegError(f"object_diameter {value:g} px is wider than any camera frame; it must be "
                            f"{MIN_OBJECT_DIAMETER:g}-{MAX_OBJECT_DIAMETER:g} px")
    return float(value)


_RECORDED = "recorded settings"


def check_recorded_settings(meta: dict, ndim: int) -> None:
    """Refuse recorded settings that cannot give a result, before anything runs (issue 25).

    The one check of what a model file or package records for segmentation: the settings'
    types and ranges (:class:`~napari_shiftseg.network.settings.SegmentationSettings`), the object
    diameter within :data:`MIN_OBJECT_DIAMETER`-:data:`MAX_OBJECT_DIAMETER`, and a min_size
    that objects of that diameter can reach. Messages name the value and say what fits; the
    caller says whose settings they are.
    """
    from .settings import SegmentationSettings

    if not isinstance(meta, dict):
        raise ShiftSegError(f"the metadata must be a dictionary, got {type(meta).__name__}")
    try:
        min_size = SegmentationSettings.of_meta(meta, _RECORDED).min_size
        diameter = _recorded_diameter(meta)
    except ShiftSegError as err:  # its message names the setting; the caller names the file
        raise ShiftSegError(str(err).removeprefix(f"{_RECORDED}: ")) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as err:  # e.g. a 400-digit number
        raise ShiftSegError(f"the settings are unreadable ({_short(err)})") from None
    limit = ball_voxels(MIN_SIZE_DIAMETERS * (diameter or MAX_OBJECT_DIAMETER), ndim)
    if min_size > limit:
        size = (f"any nucleus of {diameter:g} px" if diameter is not None
                else f"any object ({MAX_OBJECT_DIAMETER:g} px at most)")
        which = "" if meta.get("min_size") is not None else " (the default: none is recorded)"
        raise ShiftSegError(f"min_size {min_size:g} voxels{which} is larger than {size} could be, so "
                            f"every object would be dropped; the min size must be at most {limit}")


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:160]



def refuse_impossible_settings(meta: dict, ndim: int, name: str) -> None:
    """:func:`check_recorded_settings` for a file being loaded: one line naming the file."""
    try:
        check_recorded_settings(meta, ndim)
    except ShiftSegError as err:
        raise ShiftSegError(f"{name} records an impossible setting: {err}. The file is damaged or was "
                            "edited by hand; use another model file (or save this one again with a "
                            "value that fits)") from None


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a network with ``config``, built on the meta device
    (no memory is allocated for the weights)."""
    with torch.device("meta"):
        net = UNet(config)
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}
