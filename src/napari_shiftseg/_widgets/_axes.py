"""A layer with one axis more than the model: what that axis is, and the part to segment.

No Qt here. A 3D layer for a 2D model may be a z stack (segmented slice by slice, objects
linked across z), a time series (each time point on its own) or channels; a 4D layer for a 3D
model is a time series or channels; an RGB layer has its colour channels last. The user says
which in the Segment widget; these functions pick the data and place the results.
"""

from __future__ import annotations

import numpy as np

from ..util._errors import ShiftSegError

Z = "z: slice by slice, objects linked"
TIME = "time: the current point"
TIME_ALL = "time: every point"
CHANNEL = "channel: the one chosen"
CHANNELS = "channels: those the model takes"
NONE = "none"


def choices(layer_ndim: int, rgb: bool, model_ndim: int, in_channels: int = 1) -> list[str]:
    """What the extra axis can be for this layer and model (``[NONE]`` when there is none)."""
    spatial = layer_ndim
    if in_channels > 1:  # a multi-channel network: the layer must bring channels
        return [CHANNELS] if spatial == model_ndim + (not rgb) else []
    if rgb:
        return [CHANNEL] if spatial == model_ndim else []
    if spatial == model_ndim:
        return [NONE]
    if spatial == model_ndim + 1:
        return ([Z] if model_ndim == 2 else []) + [TIME, TIME_ALL, CHANNEL]
    return []


def check(layer_name: str, layer_ndim: int, rgb: bool, model_ndim: int, kind: str,
          in_channels: int = 1) -> None:
    """One line saying what is wrong with this layer, model and choice."""
    allowed = choices(layer_ndim, rgb, model_ndim, in_channels)
    if not allowed and in_channels > 1:
        raise ShiftSegError(f"the model takes {in_channels} channels: layer {layer_name!r} needs a "
                            f"channel axis first and {model_ndim} spatial axes (or RGB colours), "
                            f"it has {layer_ndim} axes")
    if not allowed:
        what = "an RGB" if rgb else f"a {layer_ndim}D"
        raise ShiftSegError(f"layer {layer_name!r} is {what} image and the model is {model_ndim}D; "
                            f"a {model_ndim}D model takes {model_ndim}D layers, or "
                            f"{model_ndim + 1}D ones with a z, time or channel axis first")
    if kind not in allowed:
        raise ShiftSegError(f"for layer {layer_name!r} and a {model_ndim}D model the extra axis can be "
                            f"{' or '.join(repr(a) for a in allowed)}, not {kind!r}")


def parse_channels(text: str, in_channels: int) -> list[int]:
    """'0,2' -> [0, 2], exactly the model's number of channels (blank: 0..in_channels-1)."""
    if not text.strip():
        return list(range(in_channels))
    try:
        picks = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ShiftSegError(f"channels must be numbers like 0,2, got {text!r}") from None
    if len(picks) != in_channels:
        raise ShiftSegError(f"the model takes {in_channels} channels, {text!r} names {len(picks)}")
    return picks


def select(data, kind: str, index: int, rgb: bool = False, channels=None):
    """The array to segment: the whole layer, one time point or one channel; for CHANNELS the
    listed ``channels``, stacked first (C, *spatial)."""
    if kind in (NONE, Z, TIME_ALL):
        return data
    if kind == CHANNELS:
        n = data.shape[-1] if rgb else data.shape[0]
        bad = [c for c in channels if not 0 <= c < n]
        if bad:
            raise ShiftSegError(f"channel {bad[0]} does not exist: the layer has channels 0..{n - 1}")
        return np.moveaxis(np.asarray(data)[..., channels], -1, 0) if rgb else data[list(channels)]
    n = data.shape[-1] if rgb else data.shape[0]
    if not 0 <= index < n:
        what = "channel" if kind == CHANNEL else "time point"
        raise ShiftSegError(f"{what} {index} does not exist: the layer has {n} ({what}s 0..{n - 1})")
    return data[..., index] if rgb else data[index]


def placement(where: dict, kind: str, index: int, layer_scale, layer_translate) -> dict:
    """Scale/translate of results for the selected part (``where``: of the model's axes)."""
    if kind in (TIME, TIME_ALL):
        s, t = float(layer_scale[0]), float(layer_translate[0])
        offset = t + s * index if kind == TIME else t
        return {"scale": (s, *where["scale"]), "translate": (offset, *where["translate"])}
    return where


def model_axes(scale, translate, kind: str, rgb: bool):
    """The layer's scale/translate on the axes the model sees."""
    if kind in (TIME, TIME_ALL, CHANNEL, CHANNELS) and not rgb:
        return tuple(scale)[1:], tuple(translate)[1:]
    return tuple(scale), tuple(translate)


def with_time_axis(layer_tuples: list[tuple], kind: str, index: int, layer) -> list[tuple]:
    """Give one time point's result layers the layer's time axis (one point long, at ``index``)."""
    out = []
    for data, kwargs, layer_type in layer_tuples:
        kwargs = dict(kwargs)
        kwargs.update(placement({"scale": kwargs["scale"], "translate": kwargs["translate"]}, kind,
                                index, layer.scale, layer.translate))
        out.append((data[None], kwargs, layer_type))
    return out


def stack_time(per_point: list[list[tuple]], layer) -> list[tuple]:
    """Result layers of every time point stacked along the layer's time axis."""
    out = []
    for parts in zip(*per_point):
        data = np.stack([np.asarray(p[0]) for p in parts])
        kwargs = dict(parts[0][1])
        kwargs.update(placement({"scale": kwargs["scale"], "translate": kwargs["translate"]},
                                TIME_ALL, 0, layer.scale, layer.translate))
        kwargs.pop("features", None)  # one table per time point would not fit one layer
        out.append((data, kwargs, parts[0][2]))
    return out
