"""One rule for option objects given as keywords: ``f(..., steps=500)`` changes one field.

:class:`~napari_shiftseg.training.train_options.TrainOptions` and
:class:`~napari_shiftseg.inference.segment_options.SegmentOptions` group what used to be 20-30 keyword
arguments. Call sites that change one or two of them pass those by name; the fields of a
nested option object (the loss' ``delta_d``, the clustering's ``seed``) may be given flat.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def with_overrides(options: T, owner: str, overrides: dict[str, Any]) -> T:
    """``options`` with the named fields changed (a typo raises TypeError like Python would)."""
    if not overrides:
        return options
    fields = {f.name for f in dataclasses.fields(options)}  # type: ignore[arg-type]
    nested = {name: getattr(options, name) for name in fields
              if dataclasses.is_dataclass(getattr(options, name))}
    inner = {name: {f.name for f in dataclasses.fields(value)} for name, value in nested.items()}
    overrides = dict(overrides)
    changes: dict[str, Any] = {}
    for name, names in inner.items():
        flat = {k: overrides.pop(k) for k in list(overrides) if k in names and k not in fields}
        if flat:
            changes[name] = dataclasses.replace(overrides.pop(name, nested[name]), **flat)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword argument(s): {', '.join(unknown)}")
    return dataclasses.replace(options, **overrides, **changes)  # type: ignore[type-var]
