"""napari widgets: the only part of the package that imports Qt and napari.

One widget per module (``segment``, ``train``, ``inspect``); the manifest points at those
modules directly, so importing ``napari_shiftseg`` never loads Qt. Shared pieces:
``_worker`` (thread_worker + cancel + progress), the jobs (no Qt: ``_segment_jobs``, which
drive a :class:`~napari_shiftseg.inference.session.Session`, ``_train_jobs``, ``_inspect_jobs``),
``_layers`` (layer data tuples, no Qt), ``_model_choice`` and ``_common``.
"""
