"""The network and its geometry: the one geometry object that owns every size rule (f, l, d,
context, valid sizes, n·f^l snapping, capacity), the valid-convolution U-Net, the spatial
embedding head, the exact tile plan, devices and memory budgets, and model files (safetensors,
bioimage.io packages) with the segmentation settings they record. Imports the layers below
(synthetic, imaging, files, util), never inference or training.
"""
