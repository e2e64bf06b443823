"""One training setup for ``shiftseg train`` and the Train widget.

Both turn what they were given (annotated images or a synthetic generator, a
:class:`~napari_shiftseg.training.train_options.TrainOptions`, the network to start from and the file to
write) into one :class:`TrainingJob`, check it before any work with the rules here
(:func:`check_output`, :func:`check_start`; the window: :func:`napari_shiftseg.training.train.training_window`),
and run it with :func:`run_training` and :func:`save_trained` (together :func:`train_and_save`).
The seeds of synthetic validation images are chosen here too. No torch import at module level:
the CLI builds its parser with this module loaded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util._errors import ShiftSegError
from .train_options import TrainOptions

if TYPE_CHECKING:
    from ..network.model import Model

__all__ = ["TrainingJob", "check_output", "check_start", "synthetic_validation", "run_training",
           "save_trained", "train_and_save", "EVAL_SEED_BASE", "VALIDATION_SEED_BASE"]

#: Seeds of held-out evaluation images start here; training draws seeds below 2**31 - 1.
EVAL_SEED_BASE = 2**31
#: Seeds of the synthetic validation images (never drawn for training nor for evaluation).
VALIDATION_SEED_BASE = 2**31 + 10_000
#: How many synthetic validation images a generator gets.
VALIDATION_IMAGES = 2


@dataclass(frozen=True)
class TrainingJob:
    """One training run: everything but its callbacks and its device.

    source, labels : as :func:`~napari_shiftseg.training.train.train` takes them: an image with its
        labels, a list of (image, labels) pairs (labels None), or a generator
        ``seed -> (image, labels)`` (labels None).
    init : the network to build (a UNetConfig) or the model to continue (a Model).
    options : what the run is asked to do.
    path : the model file to write (.safetensors).
    validation_pairs : held-out (image, labels) pairs (a generator's: :func:`synthetic_validation`);
        None: ``options.validation`` of the annotated data is held out.
    annotated : where the labels are complete (sparse labels; see ``train``).
    """

    source: Any
    labels: Any
    init: Any
    options: TrainOptions
    path: Path
    validation_pairs: list | None = None
    annotated: Any = None


def check_output(path) -> Path:
    """Refuse a model file that could not be written *before* training, not after (minutes lost)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ShiftSegError(f"model files must end in .safetensors, got {path.name}")
    if path.is_dir():
        raise ShiftSegError(f"{path} is a directory; give a file name ending in .safetensors")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ShiftSegError(f"cannot write the model file {path}: {parent} is not a writable folder")
    return path


def check_start(init, ndim: int, channels: int, model: str = "the model", channels_hint: str = "") -> None:
    """Refuse a network (a new one's UNetConfig, or a Model to continue) that does not take
    ``ndim``-D training data of ``channels`` channels; ``model`` names it in the message and
    ``channels_hint`` says where the channels come from."""
    config = getattr(init, "config", init)
    if config.geometry.ndim != ndim:
        raise ShiftSegError(f"{model} is {config.geometry.ndim}D but the training data are {ndim}D")
    if config.in_channels != channels:
        raise ShiftSegError(f"{model} takes {config.in_channels} channel(s) but the training data "
                            f"give {channels}{channels_hint}")


def synthetic_validation(generate: Callable[[int], Any], n: int = VALIDATION_IMAGES) -> list:
    """Fresh (image, labels) pairs from seeds training never draws: validation for a generator."""
    return [generate(VALIDATION_SEED_BASE + i) for i in range(n)]


def run_training(job: TrainingJob, *, progress: Callable[[int, dict], None] | None = None,
                 cancel: threading.Event | None = None, device: str = "cpu") -> tuple[Model, dict]:
    """The ``train()`` call of ``job``: (model, history)."""
    from .train import train

    return train(job.source, job.labels, job.init, job.options, validation_pairs=job.validation_pairs,
                 annotated=job.annotated, progress=progress, cancel=cancel, device=device)


def save_trained(job: TrainingJob, model: Model, history: dict, cancel: threading.Event | None = None,
                 keep_stopped: bool = True) -> Path | None:
    """Write the trained ``model`` to ``job.path``; returns the path, or None when the run was
    stopped (``history["cancelled"]`` or ``cancel`` set) and not ``keep_stopped``: the CLI keeps
    what Ctrl-C stopped (its metadata says ``complete: false``), the widget's Cancel saves nothing."""
    from ..network.modelio import save_model

    stopped = history.get("cancelled") or (cancel is not None and cancel.is_set())
    if stopped and not keep_stopped:
        return None
    model.net.cpu()
    return save_model(model, job.path)


def train_and_save(job: TrainingJob, *, progress: Callable[[int, dict], None] | None = None,
                   cancel: threading.Event | None = None, device: str = "cpu",
                   keep_stopped: bool = True) -> tuple[Model, dict, Path | None]:
    """:func:`run_training`, then :func:`save_trained`: (model, history, the file or None)."""
    model, history = run_training(job, progress=progress, cancel=cancel, device=device)
    return model, history, save_trained(job, model, history, cancel, keep_stopped)
