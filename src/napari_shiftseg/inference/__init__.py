"""Inference: embeddings by exact tiles (a lazy dask array), mean-shift clustering and instance
labels, post-processing, resumable OME-Zarr runs and time series, proofreading edits, and
evaluation against labels. Imports the network and the layers below it, never training, Qt or
napari: cluster workers import this.
"""
