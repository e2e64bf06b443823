"""Files: image and label I/O (TIFF, OME-Zarr, NGFF metadata), training pairs from folders, the
output lock, and the safe replace of an existing output. Knows nothing of networks; imports only
:mod:`napari_shiftseg.util`.
"""
