"""Array operations on images and label images that need no network: intensity normalisation,
object measurements and matching metrics (AP, IoU, median diameter), resampling between voxel
sizes, the image-based object-size estimate, and the classical Otsu + watershed baseline.
Imports only :mod:`napari_shiftseg.util`.
"""
