"""Training: the discriminative loss, augmentation, sparse labels, training options and their
defaults, the training loop shared by the CLI and the Train widget, and tuning the segmentation
settings a model records. The top of the headless core: it may use inference (tuning segments).
"""
