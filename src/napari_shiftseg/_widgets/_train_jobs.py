"""The Train widget's Qt-free part: its synthetic sources, the job a Train press starts (built
and checked by the rules ``shiftseg train`` uses, :mod:`napari_shiftseg.training.train_setup`), the
worker-thread job itself, and the widget's text lines and loss plot. No Qt, no napari.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..network.geometry import UNetGeometry
from ..network.settings import SegmentationSettings

# Imported here, not inside the job: the widget imports this module when it opens, so the
# (slow, GIL-holding) first imports never happen in a worker while the user waits on the GUI.
from ..synthetic import synth
from ..training import train
from ..training.train_options import TrainOptions
from ..training.train_setup import (
    TrainingJob,
    check_output,
    check_start,
    synthetic_validation,
    train_and_save,
)

#: The widget's synthetic training data: its label -> the :class:`SyntheticSource` kind.
SYNTHETIC = {
    "synthetic: lattice spacing 15": "lattice15",
    "synthetic: random objects": "random",
}


@dataclass(frozen=True)
class SyntheticSource:
    """``seed -> (image, labels)``: a fresh synthetic image per training step."""

    kind: str
    shape: tuple

    def __call__(self, seed: int):
        rng = np.random.default_rng(seed)
        if self.kind == "lattice15":
            # A random lattice offset per image: every phase of the lattice gets trained.
            offset = tuple(int(o) for o in rng.integers(0, 15, len(self.shape)))
            return synth.lattice(self.shape, spacing=15, radius=5, offset=offset, noise_std=0.05,
                                 seed=seed)
        return synth.random_objects(self.shape, radius=5, density=0.15, noise_std=0.05, seed=seed)


def synthetic_source(kind: str, geometry: UNetGeometry, window: tuple[int, ...]) -> SyntheticSource:
    """A generator of images just large enough for one training input crop (per axis)."""
    return SyntheticSource(kind, tuple(max(a.training_input_size(w), 2 * w)
                                       for a, w in zip(geometry.axes, window)))


@dataclass(frozen=True)
class LayerData:
    """What the chosen layers give: the image (channels first for a multi-channel model), its
    instance labels and where they are complete (None: everywhere; see ``train``)."""

    image: Any
    labels: Any
    annotated: Any = None


def training_job(init, options: TrainOptions, path, data: LayerData | str) -> TrainingJob:
    """The job one Train press starts, checked now (a mistake is one line before any work).

    ``init`` is the network to build or the model to continue; ``data`` the layers' arrays, or
    a synthetic source's kind (a value of :data:`SYNTHETIC`). A generator has no objects to
    size the window by: it gets the default window; layers without a window get theirs sized
    to the objects by ``train`` (in the worker).
    """
    path = check_output(path)
    g = init.geometry
    if isinstance(data, str):
        check_start(init, g.ndim, 1, channels_hint=" (synthetic images have one)")
        window = train.training_window(g, options.output_window, None, options.allow_small_window)
        source = synthetic_source(data, g, window)
        validation = synthetic_validation(source) if options.validation else None
        return TrainingJob(source, None, init, options.with_overrides(output_window=window), path,
                           validation)
    channels_first = np.ndim(data.image) == np.ndim(data.labels) + 1
    check_start(init, np.ndim(data.labels) if channels_first else np.ndim(data.image),
                int(np.shape(data.image)[0]) if channels_first else 1,
                channels_hint=" (a multi-channel image layer has its channels first)")
    if options.output_window is not None:
        train.training_window(g, options.output_window, None, options.allow_small_window)
    return TrainingJob(data.image, data.labels, init, options, path, annotated=data.annotated)


def train_model(report, cancel, job: TrainingJob):
    """Train ``job`` and save it (:func:`~napari_shiftseg.training.train_setup.train_and_save`).

    Returns ``(path, history, meta)``, or None on cancel (nothing is saved); ``meta`` holds the
    held-out scores (``meta["validation"]``) and the tuned segmentation settings.
    """
    def progress(step, parts):
        report(step, job.options.steps, parts)

    model, history, path = train_and_save(job, progress=progress, cancel=cancel, keep_stopped=False)
    return None if path is None else (path, history, model.meta)


def plot_losses(axes, losses: list[tuple[int, float]]) -> None:
    """Draw the loss of each step so far, ``(step, loss)`` pairs, on matplotlib ``axes``."""
    axes.clear()
    if losses:
        steps, values = zip(*losses)
        axes.plot(steps, values, lw=1)
    axes.set_xlabel("step", fontsize=7)
    axes.set_ylabel("loss", fontsize=7)
    axes.tick_params(labelsize=6)


def describe_settings(settings: SegmentationSettings) -> str:
    """One line: the settings a model segments with."""
    s = settings
    post = [f"merge < {s.merge_distance:g}" if s.merge_distance else "",
            "absorb small" if s.absorb_small else "", "fill holes" if s.fill_holes else ""]
    return (f"bandwidth {s.bandwidth:g}, foreground > {s.fg_threshold:g}, min size {s.min_size}"
            + "".join(f", {p}" for p in post if p))


def describe_validation(meta: dict, name: str) -> str:
    """The held-out AP@0.5 and the settings the model now records (tuned, if it was)."""
    record = meta.get("validation") or {}
    settings = describe_settings(SegmentationSettings.of_meta(meta, name))
    if "ap@0.5" not in record:
        return f"{record.get('held_out', 'no validation')}; settings: {settings}"
    tuned = record.get("tuned")
    score = (tuned or record)["ap@0.5"]
    return (f"AP@0.5 {score:.3f} (best step {record.get('best_step')}; "
            f"{record.get('held_out', 'held-out part')}); "
            f"{'tuned' if tuned else 'settings'}: {settings}")


def describe_geometry(g: UNetGeometry, window: int | None) -> tuple[str, str]:
    """The live lines under the network controls: (sizes, warning); the warning is "" unless
    the window is not larger than f^l (THEORY.md, result 4)."""
    text = (f"f^l={g.grid}  capacity={g.capacity}  context={g.context}; valid inputs ≡ "
            f"{g.input_residue} (mod {g.grid}) ≥ {g.min_input_size}; ")
    text += ("window sized to the objects (about 3 diameters; synthetic data: "
             f"{train.default_training_window(g)[0]})" if window is None else
             f"window {window} → input {g.training_input_size(window)}")
    if not (g.valid and window is not None and window <= g.grid):
        return text, ""
    return text, (
        f"⚠ window {window} ≤ f^l = {g.grid}: the loss only relates pixels inside one window, "
        f"so the network's f^l phases are never trained as neighbours across the window edge; "
        f"at inference those neighbours meet and seams appear on the f^l grid. "
        f"Use a window > {g.grid}.")
