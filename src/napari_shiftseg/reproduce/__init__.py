"""Reproduce the paper's claims with numbers (``shiftseg capacity``, ``sweep``, ``window-study``,
``demo``).

Every experiment is a plain function returning plain results (rows of numbers); the CLI modules
print and save them, :mod:`.figures` draws them (matplotlib Agg, never Qt). See
``docs/REPRODUCTION.md`` for which command checks which claim and what we measured.
"""
