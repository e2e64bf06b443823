"""napari sample data: synthetic disks and spheres, generated on the fly, with ground truth.

Each sample is an image layer plus its ground-truth instance labels as a second layer.

- ``lattice15``: radius-5 disks on a square lattice with spacing 15. The offsets between
  disks are co-prime with f^l = 8, so a U-Net with l = 3 can give every disk its own embedding
  (THEORY.md, result 2; the paper's Fig. 2b).
- ``lattice16``: the same with spacing 16, a multiple of f^l: every disk sits at the same
  phase, so the network *must* give all of them the same embedding (Fig. 2a).
- Both lattices are the paper's demos, for a model that sees no positions (``disks 2D``,
  bundled). Their image layers name that model in their metadata, and the Segment (Inspect,
  Sweep) widget chooses it for them and says why in its status line: the default nuclei model
  adds positions to its embeddings, which tells the 196 disks of spacing 16 apart and hides
  the one-cluster point.
- ``spheres3d``: randomly placed spheres in a small volume.
- ``large3d``: a 512 x 1024 x 1024 float32 volume (2 GiB if materialised) as a lazy dask
  array (:func:`napari_shiftseg.synthetic.synth_large.jittered_lattice`): every plane shows spheres, and
  showing one costs only its own voxels (tens of milliseconds), so the z slider never stalls.
"""

from __future__ import annotations

from .synthetic import synth
from .synthetic.synth_large import jittered_lattice

#: Shape of the 2D lattices: the paper's 220 x 220 training image for l = 3.
LATTICE_SHAPE = (220, 220)
SPHERES_SHAPE = (48, 128, 128)
LARGE_SHAPE = (512, 1024, 1024)
# One plane thick: showing a slice generates that plane only (16 chunks of 256 x 256), and a
# tile of a segmentation run reads just its own part of each plane.
LARGE_CHUNKS = (1, 256, 256)


#: The bundled model the lattice samples are for (a ``_widgets._model_choice.BUNDLED`` key).
PAPER_DEMO_MODEL = "bundled:disks:2"
SEPARABLE_WHY = ("the paper's separable lattice (spacing 15, co-prime with f^l = 8): the disk "
                 "model sees no positions, yet gives every disk its own embedding")
INSEPARABLE_WHY = ("the paper's inseparable lattice (spacing 16 = 2·f^l): the disk model sees no "
                   "positions, so all disks share one embedding cluster (the clusters layer); "
                   "the default nuclei model adds positions and tells them apart")


def _paper_demo(why: str) -> dict:
    """Layer metadata asking the widgets for the paper-demo model (_model_choice.layer_model)."""
    return {"metadata": {"shiftseg": {"model": PAPER_DEMO_MODEL, "why": why}}}


def _pair(image, labels, name: str, **image_kwargs) -> list[tuple]:
    return [
        (image, {"name": name, "contrast_limits": (0.0, 1.0), **image_kwargs}, "image"),
        (labels, {"name": f"{name} ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def separable_lattice() -> list[tuple]:
    """Disks of radius 5 on a lattice with spacing 15 (separable for f^l = 8)."""
    image, labels = synth.lattice(LATTICE_SHAPE, spacing=15, radius=5)
    return _pair(image, labels, "lattice spacing 15", **_paper_demo(SEPARABLE_WHY))


def inseparable_lattice() -> list[tuple]:
    """Disks of radius 5 on a lattice with spacing 16 (f^l-periodic: inseparable)."""
    image, labels = synth.lattice(LATTICE_SHAPE, spacing=16, radius=5)
    return _pair(image, labels, "lattice spacing 16", **_paper_demo(INSEPARABLE_WHY))


def spheres_3d() -> list[tuple]:
    """Randomly placed spheres (radius 5 +- 1) in a 48 x 128 x 128 volume."""
    image, labels = synth.random_objects(SPHERES_SHAPE, radius=5, density=0.1, seed=0)
    return _pair(image, labels, "spheres 3D")


def large_lazy_volume() -> list[tuple]:
    """A 2 GiB volume of spheres as lazy dask arrays (nothing is computed up front)."""
    image, labels = jittered_lattice(LARGE_SHAPE, LARGE_CHUNKS)
    return _pair(image, labels, "large lazy volume")
