"""Checks of numbers a user passes in (settings, counts), with one sentence that names the value.

One owner, so that "bandwidth", "n_seeds" or "min_size" are refused with the same words by the
clustering, the labelling, the mean-shift and the segmentation job. bool is refused where a
number is asked for (``True`` is an int in Python, never a meant bandwidth).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from ._errors import ShiftSegError

__all__ = ["number", "whole"]


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


def whole(value, name: str, low: int) -> int:
    """``value`` as an int ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ShiftSegError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)
