"""Checks of numbers a user passes in (settings, counts), with one sentence that names the value.

One owner, so that "bandwidth", "n_seeds" or "min_size" are refused with the same words by the
clustering, the labelling, the mean-shift, the segmentation job, the network's geometry and the
training options. bool is refused where a number is asked for (``True`` is an int in Python,
never a meant bandwidth). Parsing the *text* of a command-line flag is argparse's job
(``cli/_args.py``); these check values.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from ._errors import ShiftSegError

__all__ = ["is_whole", "number", "whole", "finite"]


def is_whole(value) -> bool:
    """An integer that is not a bool (True as a size or a count is always a mistake)."""
    return isinstance(value, (Integral, np.integer)) and not isinstance(value, bool)


def number(value, name: str, low: float, high: float | None = None, *, optional: bool = False):
    """``value`` as a finite float with ``low < value`` (and ``< high``); None passes when
    ``optional``."""
    if value is None and optional:
        return None
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value)) \
        and float(value) > low and (high is None or float(value) < high)
    if not ok:
        allowed = f"> {low:g}" if high is None else f"between {low:g} and {high:g} (exclusive)"
        raise ShiftSegError(f"{name} must be a number {allowed}, got {value!r}")
    return float(value)


def whole(value, name: str, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int ``>= low`` (and ``<= high``; ``why`` says why that bound)."""
    if high is None:
        if not is_whole(value) or value < low:
            raise ShiftSegError(f"{name} must be a whole number >= {low}, got {value!r}")
        return int(value)
    if not is_whole(value):
        raise ShiftSegError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ShiftSegError(f"{name} must be between {low} and {high}{reason}, got {value}")
    return int(value)


def finite(name: str, value, kind=float, positive: bool = True, allow_zero: bool = False):
    """``value`` as ``kind`` (float or int), refused unless a finite (positive) number; a value
    that is not a number at all is a TypeError, as Python would raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ShiftSegError(f"{name} must be a finite number, got {value}")
    if kind is int and int(value) != value:
        raise ShiftSegError(f"{name} must be a whole number, got {value}")
    if positive and not (value > 0 or (allow_zero and value == 0)):
        raise ShiftSegError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
    return kind(value)
