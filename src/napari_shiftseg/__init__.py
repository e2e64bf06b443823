"""napari-shiftseg: exact tile-and-stitch instance segmentation with shift-equivariant U-Nets.

The package root stays light (no torch, Qt or napari import) so that napari starts fast and
cluster workers can import the headless core.
"""

__version__ = "0.1.0"
