"""User-facing errors.

Everything a user can get wrong (a bad shape, a corrupt model file, a tile that is too small)
raises :class:`ShiftSegError` with one sentence that names the bad value and what is allowed.
The CLI prints such errors as a single line and exits non-zero; the widgets show them in the
status bar. Programming errors stay ordinary exceptions with tracebacks.
"""


class ShiftSegError(ValueError):
    """A problem with the user's input, model file or settings (message is user-facing)."""
