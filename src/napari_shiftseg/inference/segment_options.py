"""What a resumable segmentation run is asked to do (``segment_to_zarr``, ``recluster``).

:func:`~napari_shiftseg.inference.segment.segment_to_zarr` used to take 28 parameters and pass 19 of them
on to its tile loop. The run's choices now travel as one :class:`SegmentOptions` (with its
:class:`ClusterOptions`), the flags of ``shiftseg segment`` one to one; the callbacks (progress,
cancel, stage) and the dask client stay separate arguments because they are not choices about
the result. Keywords still work: ``segment_to_zarr(img, out, tile=64)``
(:func:`~napari_shiftseg.util._options.with_overrides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..network.settings import SegmentationSettings
from ..util._errors import ShiftSegError
from ..util._options import with_overrides
from .clustering import ClusterOptions

__all__ = ["ClusterOptions", "SegmentOptions", "settings_and_clustering"]


#: The segmentation settings a run may override; None keeps the model's recorded value.
SETTING_NAMES = ("bandwidth", "min_size", "fg_threshold", "merge_distance", "absorb_small", "fill_holes")


@dataclass(frozen=True)
class SegmentOptions:
    """Everything ``segment_to_zarr`` is asked to do, apart from its input, output and model.

    tile : output tile per axis (snapped to n·f^l in ``exact`` mode; also the zarr chunk), or
        ``"auto"`` (the largest n·f^l tile whose estimated memory fits the device).
    device, mode : as for :func:`~napari_shiftseg.inference.predict.predict_embeddings`.
    settings : the segmentation settings, whole and typed
        (:class:`~napari_shiftseg.network.settings.SegmentationSettings`, e.g. a widget's form); None
        takes the ones recorded in the model file (tuned at training time).
    bandwidth, min_size, fg_threshold, merge_distance, absorb_small, fill_holes : single
        settings changed on top of ``settings`` (CLI flags); None keeps the value.
    clustering : mean-shift seeding and connectivity (:class:`ClusterOptions`; its fields may be
        given flat, ``seed=3``).
    diameter : object diameter in the image (pixels), ``'auto'`` (estimated on a central crop)
        or None (as imaged); the network runs on the image resampled to the model's scale
        (:mod:`napari_shiftseg.imaging.rescale`).
    channel : for an image file with channels, the one to segment; for a multi-channel model,
        the ones it takes, in its order.
    per_slice : run a 2D model on each slice of a 3D image (None: whenever a 2D model meets a
        3D image).
    isotropic, voxel_size : resample (lazily) to isotropic voxels first: ``"auto"`` (default)
        whenever a 3D model meets a stack whose voxel size is anisotropic, True always (a voxel
        size is then required), False never; the voxel size is ``voxel_size`` or, for an image
        file, the one its metadata records (:func:`napari_shiftseg.imaging.rescale.plan_resampling`).
    overwrite : replace an existing output (staged beside it, swapped in when complete).
    ngff : OME-Zarr version of the output, "0.5" (zarr v3) or "0.4" (zarr v2).
    tile_resources : dask resources every tile task needs, e.g. ``{"GPU": 1}`` (docs/CLUSTER.md).
    """

    tile: int | Sequence[int] | str = 128
    device: str = "auto"
    mode: str = "exact"
    settings: SegmentationSettings | None = None
    bandwidth: float | None = None
    min_size: int | None = None
    fg_threshold: float | None = None
    merge_distance: float | None = None
    absorb_small: bool | None = None
    fill_holes: bool | None = None
    clustering: ClusterOptions = field(default_factory=ClusterOptions)
    diameter: float | str | None = None
    channel: int | Sequence[int] | None = None
    per_slice: bool | None = None
    isotropic: bool | str = "auto"
    voxel_size: Sequence[float] | None = None
    overwrite: bool = False
    ngff: str = "0.5"
    tile_resources: dict | None = None

    def __post_init__(self):
        if not isinstance(self.clustering, ClusterOptions):
            raise ShiftSegError(f"clustering must be ClusterOptions, got {type(self.clustering).__name__}")
        if self.settings is not None and not isinstance(self.settings, SegmentationSettings):
            raise TypeError(f"settings must be SegmentationSettings, got {type(self.settings).__name__}")

    def with_overrides(self, **overrides) -> SegmentOptions:
        """A copy with these fields changed (clustering fields may be given flat)."""
        return with_overrides(self, "segment_to_zarr", overrides)

    def settings_for(self, model):
        """``settings`` (default: the model's recorded ones) with the single settings given here
        instead. Passed on as they are: switched-off post-processing stays off."""
        base = self.settings if self.settings is not None else SegmentationSettings.of(model)
        return base.replace(**{k: getattr(self, k) for k in SETTING_NAMES})


def settings_and_clustering(settings, clustering: ClusterOptions | None, overrides: dict, owner: str,
                            default_settings=None):
    """``(settings, clustering)`` with ``overrides`` applied to whichever of the two owns each
    name (``bandwidth=1.5`` to the settings, ``seed=2`` to the clustering); ``merge_distance``
    None means no merging."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(SegmentationSettings)}
    overrides = dict(overrides)
    if "merge_distance" in overrides and overrides["merge_distance"] is None:
        overrides["merge_distance"] = 0.0
    settings = settings or default_settings or SegmentationSettings()
    if not isinstance(settings, SegmentationSettings):
        raise TypeError(f"settings must be SegmentationSettings, got {type(settings).__name__}")
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if k in names})
    clustering = with_overrides(clustering or ClusterOptions(), owner,
                                {k: v for k, v in overrides.items() if k not in names})
    return settings, clustering
