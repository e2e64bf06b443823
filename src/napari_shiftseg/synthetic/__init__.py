"""Synthetic data with exact truth: the paper's disks and spheres, nuclei images, large lazy
volumes, and realistic microscope stacks (anisotropic blur, haze, crowding) for training and
held-out benchmarks. Imports :mod:`~napari_shiftseg.imaging` and :mod:`~napari_shiftseg.util`.
"""
