"""Utilities every layer may use: the user-facing error type, option overrides, number and array
validators, progress and cancel, thread budgets, and the :class:`~.region.Region` value object
(offset + shape) used wherever an array is sliced. Imports nothing else from the package.
"""
