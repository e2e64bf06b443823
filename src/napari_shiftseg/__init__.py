"""napari-shiftseg: exact tile-and-stitch instance segmentation with shift-equivariant U-Nets.

The package root stays light (no torch, Qt or napari import) so that napari starts fast and
cluster workers can import the headless core.
"""

# Before anything imports torch: OpenMP threads that sleep instead of spinning while they wait
# (docs/THREADS.md). The OpenMP runtime reads this once, when torch loads; a user's value wins.
from .util.threads import set_env_defaults as _set_env_defaults

_set_env_defaults()

__version__ = "0.1.0"
