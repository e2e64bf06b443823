"""Training loop: random crops, flips/noise, discriminative + foreground loss, checkpoints.

One training step, per batch item (sizes from :class:`~napari_shiftseg.network.geometry.UNetGeometry`)::

    image: normalised + reflect-padded ONCE              labels: never padded
    ┌────────────────────────────────────────┐           ┌──────────────────────────┐
    │ input crop = training_input_size(w)    │           │                          │
    │ ├── front ──┼──── w ────┼── back ──┤   │           │    ├──── w ────┤         │
    └────────────────────────────────────────┘           └──────────────────────────┘
    net(input crop) → raw output o ≥ w → centre crop (o − w)//2 → w   ←loss→   label window
    (front = context/2 + (o − w)//2: the window sits at the same place in both)

- **The output window w must be larger than f^l per axis** (THEORY.md, result 4): with a
  window <= f^l some neighbouring phases u_i, u_j are never trained together and the
  result shows seams on the f^l grid. ``allow_small_window=True`` reproduces that failure on
  purpose; the raw output is then centre-cropped to exactly w.
- Crop origins are uniform over *all* integer positions, so every phase is trained.
- Normalisation is global (percentile, once per image), never per crop: inference normalises
  the whole image once too, and per-crop statistics would give every tile another function.
- Each image is reflect-padded once by the context, as inference pads the volume at its outer
  border, so objects at the image border are trained with the same kind of context they get at
  inference; label windows always lie inside the real image. This matters: a model trained
  without reflected borders split most objects touching the image border in a test (3D AP@0.5
  0.85 with reflected borders vs 0.97 with a natural dark border).
- Flip augmentation flips the input crop and flips the raw output back (the valid context is
  symmetric, so this realigns exactly); the labels are never moved.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..files.data import validate_pair
from ..imaging.metrics import median_diameter
from ..imaging.normalize import percentile_normalization
from ..network.geometry import UNetGeometry
from ..network.modelio import Model, save_model
from ..network.settings import SegmentationSettings
from ..network.spatial import add_positions_torch
from ..network.unet import UNet, UNetConfig, memory_format
from ..util._errors import ShiftSegError
from .augment import Augmentation, move, unmove
from .loss import discriminative_loss, foreground_loss
from .sparse import mark_unannotated
from .train_options import LossSettings, TrainOptions
from .tuning import better, quick_score, split_validation, tune_settings, validation_embeddings

__all__ = ["train", "default_training_window", "default_embed_dim", "network_config", "suggest_training_window",
           "training_window", "suggest_factors", "physical_position_scale", "NORMALIZATION", "LOSS_DEFAULTS",
           "TrainOptions", "LossSettings"]

#: Normalisation every model trained here records in its metadata; inference applies the same
#: percentiles of the *whole* image.
NORMALIZATION: dict[str, Any] = {"method": "percentile", "low": 1.0, "high": 99.8}

#: Reference loss settings (De Brabandere et al.; THEORY.md) with a small pull margin.
LOSS_DEFAULTS = {k: v for k, v in LossSettings().to_meta().items() if not isinstance(v, bool)}

#: Metadata of a model that continued training copies into ``initialised_from``.
PROVENANCE = ("command", "steps", "complete", "final_loss", "seconds", "device", "initialised_from")

#: Number of final steps averaged for the reported ``final_loss`` (single steps are noisy).
FINAL_LOSS_STEPS = 20


def default_training_window(geometry: UNetGeometry) -> tuple[int, ...]:
    """A training output window comfortably above f^l: the raw output for ``max(4 f^l, 32)``.

    Rounded up to a raw output size the network produces, so no output voxel is wasted.
    """
    return tuple(a.output_size(a.training_input_size(max(4 * a.grid, 32))) for a in geometry.axes)


#: A new network's settings (``shiftseg train`` option names; the Train widget shows the same):
#: the spatial head won on the BBBC007 dev set (docs/MODELS.md).
NETWORK_DEFAULTS: dict[str, Any] = {"levels": 3, "factor": 2, "upsampling": "learnt", "padding": "valid",
                    "base_channels": 16, "embed_dim": None, "no_foreground_head": False,
                    "embedding": "spatial", "position_scale": 0.25, "factors": None,
                    "in_channels": 1}
#: A new 3D network pools twice, as the bundled 3D model: l = 3 scored lower on the 3D dev set
#: in the same CPU time and costs 3–5× per step (docs/MODELS.md).
NETWORK_DEFAULTS_3D: dict[str, Any] = {**NETWORK_DEFAULTS, "levels": 2}


def network_defaults(ndim: int) -> dict[str, Any]:
    """:data:`NETWORK_DEFAULTS` for a 2D network, :data:`NETWORK_DEFAULTS_3D` for 3D."""
    return NETWORK_DEFAULTS_3D if ndim == 3 else NETWORK_DEFAULTS


def suggest_factors(voxel_size, levels: int, factor: int = 2):
    """Per-level, per-axis pooling factors for voxels of ``voxel_size`` (one size per axis), or
    None when pooling every axis alike suits them.

    As nnU-Net plans its anisotropic networks: at each level an axis is pooled only while its
    current voxel (the original size times the pooling so far) is at most twice the finest
    axis' current voxel; so a stack whose z step is 3× its pixel keeps full z resolution at the
    first level ((1, 2, 2)) and pools alike from then on.
    """
    size = np.asarray(voxel_size, dtype=np.float64)
    if size.ndim != 1 or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise ShiftSegError(f"voxel size must be positive numbers, one per axis, got {voxel_size!r}")
    rows = []
    for _ in range(int(levels)):
        row = tuple(factor if s <= 2 * size.min() * (1 + 1e-9) else 1 for s in size)
        rows.append(row)
        size = size * np.array(row)
    return None if all(f == factor for row in rows for f in row) else tuple(rows)


def physical_position_scale(voxel_size, scale: float) -> tuple[float, ...] | float:
    """A spatial head's position scale per axis for voxels of ``voxel_size``: ``scale`` on the
    finest axis, proportionally more on coarser ones, so that embedding distances are physical
    (a z step 3x the pixel: 3x the scale). One number when the voxels are cubic."""
    size = np.asarray(voxel_size, dtype=np.float64)
    if np.allclose(size, size.min()):
        return scale
    return tuple(round(float(scale * v / size.min()), 6) for v in size)

def default_embed_dim(ndim: int, embedding: str) -> int:
    """Embedding channels of a new network: the paper's 3 free ones, or for a spatial head one
    offset per axis plus one free channel (on the dev set the free channel lifted synthetic
    nuclei AP@0.5 from 0.42 to 0.51 at equal BBBC007 scores; docs/MODELS.md)."""
    return ndim + 1 if embedding == "spatial" else 3


def network_config(ndim: int, **options) -> UNetConfig:
    """A new network's config: :func:`network_defaults` of ``ndim``, with any ``options`` (same
    names, None = default) changed. ``shiftseg train`` builds its network here."""
    unknown = set(options) - set(NETWORK_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown network options {sorted(unknown)}")
    o = {**network_defaults(ndim), **{k: v for k, v in options.items() if v is not None}}
    geometry = UNetGeometry(ndim=ndim, levels=o["levels"], factor=o["factor"], padding=o["padding"],
                            factors=o["factors"])
    spatial = o["embedding"] == "spatial"
    return UNetConfig(geometry=geometry, base_channels=o["base_channels"], in_channels=o["in_channels"],
                      embed_dim=o["embed_dim"] or default_embed_dim(ndim, o["embedding"]),
                      upsampling=o["upsampling"], foreground_head=not o["no_foreground_head"],
                      embedding=o["embedding"], position_scale=o["position_scale"] if spatial else 0.0)


#: Largest default window per axis: training steps must stay affordable on a laptop CPU. In 3D
#: a 40³ window (80³ input at l = 2) costs ~0.47 s per step at batch 2 on 2 cores; 52³, ~0.8 s.
MAX_DEFAULT_WINDOW = {2: 132, 3: 40}

#: Most input voxels in one training step (all crops of a batch): about 4 GB of activations
#: for the default network, far above any sensible window.
MAX_CROP_VOXELS = 2**24

#: The default window spans this many median object diameters, so that most training windows
#: hold whole objects *and* their neighbours (the push term needs both in one window).
WINDOW_DIAMETERS = 3.0


def suggest_training_window(geometry: UNetGeometry, labels_list) -> tuple[int, ...]:
    """A training window sized to the objects: about 3 median diameters, > f^l, affordable.

    Never below :func:`default_training_window`, never above :data:`MAX_DEFAULT_WINDOW` nor
    the smallest image, and always a raw output size the network produces.
    """
    want = int(np.ceil(WINDOW_DIAMETERS * median_diameter(labels_list)))
    cap = min([MAX_DEFAULT_WINDOW[geometry.ndim]] + [int(min(np.shape(lab))) for lab in labels_list])
    return tuple(_axis_window(a, base, want, cap)
                 for a, base in zip(geometry.axes, default_training_window(geometry)))


def training_window(geometry: UNetGeometry, window: int | Sequence[int] | None = None, labels_list=None,
                    allow_small: bool = False) -> tuple[int, ...]:
    """The output window a run trains with, checked (:meth:`UNetGeometry.check_training_window`).

    ``window`` as given (one number: every axis); else sized to the objects of ``labels_list``
    (:func:`suggest_training_window`); else, for a generator (no objects to size it by),
    :func:`default_training_window`. The one rule of :func:`train`, ``shiftseg train`` and the
    Train widget.
    """
    if window is None:
        window = (suggest_training_window(geometry, labels_list) if labels_list
                  else default_training_window(geometry))
    return geometry.check_training_window(window, allow_small=allow_small)


def _axis_window(a, base: int, want: int, cap: int) -> int:
    """One axis of :func:`suggest_training_window`."""
    window = a.output_size(a.training_input_size(min(max(base, want), cap)))
    while window > cap and window > base:  # rounding up overshot a small image: step down
        window = a.output_size(a.training_input_size(window - a.grid))
    return max(window, base) if window > a.grid else base


@dataclass(frozen=True)
class _Crop:
    """Per-axis crop sizes for one training window (all from the geometry)."""

    window: tuple[int, ...]  # w: labelled output window
    input: tuple[int, ...]   # input crop
    raw: tuple[int, ...]     # raw network output (>= w)
    front: tuple[int, ...]   # input voxels before the window
    back: tuple[int, ...]    # input voxels after the window

    @classmethod
    def plan(cls, geometry: UNetGeometry, window: tuple[int, ...]) -> _Crop:
        inp = geometry.training_input_size(tuple(window))
        raw = geometry.output_size(inp)
        # Same padding has context 0; valid padding's context is symmetric (context_per_side).
        front = tuple(c + (o - w) // 2 for c, o, w in zip(geometry.contexts_per_side, raw, window))
        back = tuple(i - f - w for i, f, w in zip(inp, front, window))
        return cls(window, inp, raw, front, back)

    @property
    def raw_crop(self) -> tuple[slice, ...]:
        """Slices of the raw output that form the window (centre crop)."""
        return tuple(slice((o - w) // 2, (o - w) // 2 + w) for o, w in zip(self.raw, self.window))


#: Annotated pixels kept per image to draw sparse-label windows around.
_MAX_ANCHORS = 100_000


class _Prepared:
    """One image, normalised once, with its (never padded) labels.

    With ``pad`` the image is reflect-padded once by the crop's context, so label windows may
    lie anywhere in the image, border included (inference pads the volume the same way).
    Without it, windows are drawn only where the whole input crop lies inside the image.
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray, crop: _Crop, pad: bool):
        need = crop.window if pad else crop.input
        if any(n < w for n, w in zip(labels.shape, need)):
            raise ShiftSegError(
                f"image shape {labels.shape} is smaller than the training window {crop.window}; "
                "use a smaller window (still larger than f^l) or a larger image"
            )
        if image.ndim == labels.ndim:
            image = image[None]  # channel-first always; multi-channel images come that way
        # One pair of percentiles per channel (the same rule inference applies).
        norm = percentile_normalization(image, NORMALIZATION["low"], NORMALIZATION["high"], channels_first=True)
        image = norm(image).astype(np.float32, copy=False)
        if pad:
            image = np.pad(image, [(0, 0)] + list(zip(crop.front, crop.back)), mode="reflect")
            # Window start s in label coordinates; its input crop starts at s in padded ones.
            self.low = (0,) * labels.ndim
            self.high = tuple(n - w for n, w in zip(labels.shape, crop.window))
            self.shift = (0,) * labels.ndim
        else:
            self.low = crop.front
            self.high = tuple(n - b - w for n, b, w in zip(labels.shape, crop.back, crop.window))
            self.shift = tuple(-f for f in crop.front)
        self.image, self.labels, self.crop = image, labels, crop
        # Sparse labels: windows are drawn around annotated pixels (a subsample of them), so
        # steps are not spent on windows where nothing enters the loss.
        self.anchors = None
        if (labels < 0).any():
            anchors = np.argwhere(labels >= 0)
            if len(anchors) > _MAX_ANCHORS:
                anchors = anchors[np.random.default_rng(0).choice(len(anchors), _MAX_ANCHORS, replace=False)]
            self.anchors = anchors

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random (input crop, label window) pair; origins uniform over all positions (with
        sparse labels: uniform over the windows holding a random annotated pixel)."""
        if self.anchors is None:
            start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(self.low, self.high)]
        else:
            anchor = self.anchors[int(rng.integers(len(self.anchors)))]
            start = [int(np.clip(a - rng.integers(0, w), lo, hi))
                     for a, w, lo, hi in zip(anchor, self.crop.window, self.low, self.high)]
        inp = tuple(slice(s + d, s + d + i) for s, d, i in zip(start, self.shift, self.crop.input))
        win = tuple(slice(s, s + w) for s, w in zip(start, self.crop.window))
        return self.image[(slice(None),) + inp], self.labels[win]


def _collect_pairs(source, labels, ndim: int, channels: int = 1):
    """Validated ``(image, labels)`` pairs, or None for a generator ``seed -> (image, labels)``."""
    if callable(source):
        if labels is not None:
            raise TypeError("labels must be None when the source is a generator")
        return None
    if labels is None:
        if not isinstance(source, (list, tuple)) or not source:
            raise TypeError(
                "source must be an image (with labels), a non-empty list of (image, labels) "
                "pairs, or a callable seed -> (image, labels)"
            )
        pairs = list(source)
    else:
        pairs = [(source, labels)]
    checked = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(f"training pair {i} must be (image, labels), got {type(pair).__name__}")
        image, lab = pair
        checked.append(validate_pair(image, lab, ndim, channels))
    if not any(lab.any() for _, lab in checked):
        raise ShiftSegError("the labels contain no objects (all zero); nothing to learn from")
    return checked


def _training_seed(rng: np.random.Generator) -> int:
    """A generator seed for training, never one of the benchmark's held-out test seeds."""
    from ..synthetic.synth import TEST_SEEDS

    seed = int(rng.integers(0, 2**31 - 1 - len(TEST_SEEDS)))
    return seed + len(TEST_SEEDS) if seed >= TEST_SEEDS.start else seed


def _mark_sparse(pairs, annotated) -> tuple[list | None, str]:
    """Pairs with unannotated pixels marked (sparse.UNANNOTATED), and a note for the record."""
    if annotated is None:
        return pairs, ""
    if pairs is None:
        raise ShiftSegError("sparse annotations need annotated images, not a generator")
    masks = annotated if isinstance(annotated, (list, tuple)) else [annotated] * len(pairs)
    if len(masks) != len(pairs):
        raise ShiftSegError(f"{len(masks)} annotated-region masks for {len(pairs)} images")
    marked = [(image, mark_unannotated(lab, mask)) for (image, lab), mask in zip(pairs, masks)]
    known = sum(int((lab >= 0).sum()) for _, lab in marked) / sum(lab.size for _, lab in marked)
    how = ("painted objects plus a margin" if isinstance(annotated, str)
           else "the annotated-region mask")
    return marked, f"; sparse labels: {known:.0%} of the pixels annotated ({how})"


def _sampler(source, pairs, ndim: int, crop: _Crop, channels: int = 1):
    """``next_image(rng) -> _Prepared`` over the training pairs or a generator."""
    if pairs is None:
        def fresh(rng):
            # A new synthetic image per call, drawn from the run's own seed sequence.
            generated: tuple[Any, Any] = source(_training_seed(rng))
            image, lab = validate_pair(*generated, ndim, channels)
            # Padded like every other image: a model that never saw reflected borders in
            # training splits the objects at the border of every image it segments.
            return _Prepared(image, lab, crop, pad=True)

        return fresh, "synthetic generator"
    prepared = [_Prepared(image, lab, crop, pad=True) for image, lab in pairs]
    return (lambda rng: prepared[int(rng.integers(0, len(prepared)))]), f"{len(prepared)} image(s)"


def train(
    source,
    labels=None,
    config: UNetConfig | Model | None = None,
    options: TrainOptions | None = None,
    *,
    validation_pairs: Sequence[tuple[Any, Any]] | None = None,
    annotated=None,
    progress: Callable[[int, dict], None] | None = None,
    cancel: threading.Event | None = None,
    device: str | torch.device = "cpu",
    **overrides,
) -> tuple[Model, dict]:
    """Train a U-Net embedding model on labelled images or a synthetic generator.

    Parameters
    ----------
    source : array, list of (image, labels), or callable
        One raw image (with ``labels``), a list of ``(image, labels)`` pairs, or a callable
        ``seed -> (image, labels)`` called once per batch item and step for fresh data.
    labels : array, optional
        Instance labels for a single ``source`` image (0 = background).
    config : UNetConfig or Model, optional
        Network to build (default :class:`UNetConfig`), or a model to continue training.
    options : TrainOptions, optional
        Steps, learning rate, window, augmentation, validation, loss, ... (defaults:
        :class:`~napari_shiftseg.training.train_options.TrainOptions`).
    validation_pairs : list of (image, labels), optional
        Validate on these instead of holding data out (e.g. for a synthetic generator).
    annotated : None, "painted", array or list of arrays, optional
        Where the labels are complete (sparse annotations, :mod:`napari_shiftseg.training.sparse`): None
        = everywhere; "painted" = the painted objects plus a margin; a mask (one per training
        pair) whose non-zero pixels are the annotated region. Outside it, pixels enter no loss.
    progress : callable, optional
        ``progress(step, parts)`` after each step; ``parts`` holds floats ``loss``, ``pull``,
        ``push``, ``reg`` and ``foreground``.
    cancel : threading.Event, optional
        When set, training stops before the next step and returns the model so far.
    device : str or torch.device
        Where to train ("cpu", "cuda", ...).
    **overrides
        Fields of ``options`` to change, by name (``steps=500``; loss fields flat, ``delta_d=2``):
        :meth:`TrainOptions.with_overrides`.

    Returns
    -------
    model : Model
        The trained network (eval mode) with ``meta``: normalisation, training window, steps,
        final loss (mean of the last 20 steps), loss settings, seed, command.
    history : dict
        Per-step lists ``loss``, ``pull``, ``push``, ``reg``, ``foreground``, plus
        ``steps_done``, ``cancelled`` and ``seconds``.

    Raises
    ------
    ShiftSegError
        Bad window, images smaller than the window, invalid image/labels, bad numbers.
    TypeError
        A source of the wrong kind, or an unknown option.
    """
    if options is not None and not isinstance(options, TrainOptions):
        raise TypeError(f"options must be a TrainOptions, got {type(options).__name__}")
    run = (options or TrainOptions()).with_overrides(**overrides)
    steps, batch_size, lr, seed = run.steps, run.batch_size, run.lr, run.seed
    base = None
    if isinstance(config, Model):
        base, config = config, config.config
    config = config or UNetConfig()
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig or Model, got {type(config).__name__}")
    geometry = config.geometry
    augment = run.augmentation()
    if augment.transpose and geometry.axis(geometry.ndim - 1) != geometry.axis(geometry.ndim - 2):
        # Swapping y and x is a symmetry of the data only if the network treats them alike.
        augment = dataclasses.replace(augment, transpose=False)
    pairs = _collect_pairs(source, labels, geometry.ndim, config.in_channels)
    pairs, sparse_note = _mark_sparse(pairs, annotated)
    if sparse_note and run.loss.background_as_instance:
        raise ShiftSegError("sparse annotations cannot train background as an instance: outside "
                            "the annotated region nothing is known to be background")
    window = training_window(geometry, run.output_window, [lab for _, lab in pairs] if pairs else None,
                             run.allow_small_window)
    if min(window) < 1:
        raise ShiftSegError(f"training window {window} must be positive")
    crop = _Crop.plan(geometry, window)
    crop_voxels = int(np.prod(crop.input)) * batch_size
    if crop_voxels > MAX_CROP_VOXELS:
        # Refused before any image is generated or padded: a 100000-wide window once took 6 GB.
        raise ShiftSegError(
            f"the training window {window} needs input crops of {crop.input} x {batch_size} "
            f"({crop_voxels:,} voxels per step), more than the {MAX_CROP_VOXELS:,} a training step "
            "can hold; use a smaller --window or --batch-size")
    if validation_pairs is not None:
        train_pairs = pairs
        val_pairs = [validate_pair(*p, geometry.ndim, config.in_channels) for p in validation_pairs]
        val_note = f"{len(val_pairs)} given validation image(s)"
    elif pairs is not None:
        train_pairs, val_pairs, val_note = split_validation(pairs, run.validation, window)
    else:
        train_pairs, val_pairs, val_note = None, [], "no validation"
    next_image, description = _sampler(source, train_pairs, geometry.ndim, crop, config.in_channels)
    validate_every = run.validate_every or max(25, steps // 10)
    loss_args = run.loss.loss_arguments()
    delta_d = run.loss.delta_d

    try:
        device = torch.device(device)
    except RuntimeError:
        raise ShiftSegError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ShiftSegError(f"device {str(device)!r} was asked for but torch sees no CUDA GPU here")
    fmt = memory_format(geometry.ndim)
    old_threads = torch.get_num_threads()
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    history: dict[str, Any] = {k: [] for k in ("loss", "pull", "push", "reg", "foreground")}
    history.update(steps_done=0, cancelled=False, seconds=0.0, validation=[])
    best = None  # (step, scores, state_dict) of the best held-out score so far
    rng = np.random.default_rng(seed)
    fork_devices = [device] if device.type == "cuda" else []
    start = time.perf_counter()

    # Continued training keeps the earlier run's provenance (nested for longer chains).
    provenance = None
    if base is not None:
        provenance = {"model": base.name, **{k: base.meta[k] for k in PROVENANCE if k in base.meta}}

    # Settings a continued model does not re-tune are inherited from it (never reset to None).
    # A new network starts from settings that do not split objects (merge touching fragments
    # with close means, absorb small ones): tuning on a small held-out part often ties, and a
    # tie keeps the start (measured on one BBBC007 crop: over-splitting was the main error).
    settings = (SegmentationSettings.of(base) if base is not None
                else SegmentationSettings(bandwidth=round(2 * delta_d / 3, 3),
                                          merge_distance=round(delta_d / 2, 3), absorb_small=True))
    validation_record: dict = {"held_out": val_note}
    # The object size the model learnt, so that images of other magnifications are resampled to
    # it (rescale.py): position offsets and the bandwidth are in pixels. Spatial heads only.
    diameter = (round(median_diameter([lab for _, lab in pairs]), 1) if pairs
                else (base.meta.get("object_diameter") if base is not None else None))
    diameter = diameter if config.embedding == "spatial" and diameter else None

    def meta(done: int, complete: bool) -> dict:
        tail = history["loss"][-FINAL_LOSS_STEPS:]
        return {
            **settings.to_meta(),
            "normalization": dict(NORMALIZATION),
            "training_window": list(window),
            **({"object_diameter": diameter} if diameter else {}),
            "steps": done,
            "complete": complete,
            "final_loss": float(np.mean(tail)) if tail else None,
            **run.to_meta(),
            "augment": augment.to_dict(),  # as applied (no transposition on anisotropic nets)
            "training_data": description + sparse_note, "device": str(device),
            "validation": validation_record,
            "seconds": round(time.perf_counter() - start, 1),
            **({"command": run.command} if run.command else {}),
            **({"initialised_from": provenance} if provenance else {}),
        }

    try:
        # fork_rng: seed torch for this run without disturbing the caller's global RNG state.
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            net = copy.deepcopy(base.net) if base is not None else UNet(config)
            # torch's Module.to overloads leave out memory_format, which Module.to accepts
            net = net.to(device=device, memory_format=fmt).train()  # type: ignore[call-overload]
            optimizer = torch.optim.Adam(net.parameters(), lr=lr)
            if run.lr_schedule == "cosine":
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            if base is not None and val_pairs:
                # The starting weights compete too: continued training never returns a model
                # that scores worse on the held-out part than the one it started from.
                result = _validate(net, meta(0, False), val_pairs, settings, device)
                history["validation"].append({"step": 0, **result})
                best = (0, result, copy.deepcopy(net.state_dict()))
                net.train()
            # Offsets of a spatial head are vectors: flips and transpositions turn them too.
            vectors = config.geometry.ndim if config.embedding == "spatial" else 0
            for step in range(1, steps + 1):
                if cancel is not None and cancel.is_set():
                    history["cancelled"] = True
                    break
                x, y, moves = _batch(next_image, rng, batch_size, augment)
                x = torch.from_numpy(x).to(device).contiguous(memory_format=fmt)
                y = torch.from_numpy(y).to(device)
                raw_crop = (slice(None), slice(None), *crop.raw_crop)
                out = _unmove(net(x), moves, vectors)[raw_crop]
                embeddings = out[:, : config.embed_dim]
                if config.embedding == "spatial":
                    embeddings = add_positions_torch(embeddings, config.position_scale)
                # Unannotated pixels (sparse labels, -1) are ignored like background by the
                # discriminative loss and left out of the foreground loss.
                known = y >= 0 if sparse_note else None
                y = y.clamp(min=0) if sparse_note else y
                loss, parts = discriminative_loss(embeddings, y, **loss_args)
                fg = (foreground_loss(out[:, config.embed_dim], y, known) if config.foreground_head
                      else loss * 0)
                total = loss + run.loss.foreground_weight * fg
                if not torch.isfinite(total):
                    raise ShiftSegError(
                        f"the loss became {float(total.detach())} at step {step}; lower the learning rate"
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                if run.lr_schedule == "cosine":
                    scheduler.step()
                values = {"loss": total.detach().item(),
                          **{k: v.detach().item() for k, v in parts.items()},
                          "foreground": fg.detach().item()}
                for key, value in values.items():
                    history[key].append(value)
                history["steps_done"] = step
                if progress is not None:
                    progress(step, values)
                if val_pairs and (step % validate_every == 0 or step == steps):
                    result = _validate(net, meta(step, False), val_pairs, settings, device)
                    history["validation"].append({"step": step, **result})
                    if better(result, best[1] if best else None):
                        best = (step, result, copy.deepcopy(net.state_dict()))
                    net.train()
                every = run.checkpoint_every
                if run.checkpoint_path and every and step % every == 0 and step < steps:
                    save_model(Model(copy.deepcopy(net).cpu().eval(), meta(step, False)), run.checkpoint_path)
        net.eval()
        if best is not None:
            # The best held-out score wins over the last step: later steps can over-fit a
            # few hundred annotated objects.
            net.load_state_dict(best[2])
            validation_record.update(best_step=best[0], **{k: round(v, 4) for k, v in best[1].items()})
            if run.tune:  # --no-tune keeps every setting, the bandwidth included
                settings = dataclasses.replace(settings, bandwidth=best[1]["bandwidth"])
            if run.tune and not history["cancelled"]:
                tuned = Model(net, meta(history["steps_done"], False))
                val_embeddings = validation_embeddings(tuned, val_pairs, str(device))
                settings, result, trials = tune_settings(
                    val_embeddings, val_pairs, settings, config.foreground_head, delta_d)
                validation_record.update(tuned={k: round(v, 4) for k, v in result.items()},
                                         trials=len(trials))
    finally:
        torch.set_num_threads(old_threads)
    history["seconds"] = time.perf_counter() - start
    net.eval()
    done = history["steps_done"]
    model = Model(net, meta(done, done == steps and not history["cancelled"]))
    return model, history


def _validate(net, meta: dict, val_pairs, settings: SegmentationSettings, device) -> dict:
    """Held-out AP@0.5 and averaged AP of the network as it is now (leaves it in eval mode)."""
    model = Model(net, meta)
    embeddings = validation_embeddings(model, val_pairs, str(device))
    delta_d = float(meta.get("loss", {}).get("delta_d", 3.0))
    return quick_score(embeddings, val_pairs, settings, net.config.foreground_head, delta_d)


def _unmove(out: torch.Tensor, moves: Sequence[tuple[tuple[int, ...], bool]], vector_channels: int = 0) -> torch.Tensor:
    """Undo each batch item's geometric augmentation on the raw output (B, C, *S).

    ``vector_channels``: leading channels that are offsets along the axes (spatial head).
    """
    if not any(axes or transpose for axes, transpose in moves):
        return out
    return torch.stack([unmove(o, *m, vector_channels) for o, m in zip(out, moves)])


def _batch(next_image, rng, batch_size: int, augment: Augmentation):
    """Stack ``batch_size`` random crops: x (B, C, *input), labels (B, *window), moves."""
    xs, ys, moves = [], [], []
    for _ in range(batch_size):
        x, y = next_image(rng).sample(rng)  # x: (C, *input)
        m = augment.moves(rng, x.shape[1:])
        x = move(x, *m, first_axis=1)
        # Intensity changes per channel: a blur must not mix channels.
        x = np.stack([augment.intensity(c, rng) for c in x])
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(y.astype(np.int64))
        moves.append(m)
    return np.stack(xs), np.stack(ys), moves
