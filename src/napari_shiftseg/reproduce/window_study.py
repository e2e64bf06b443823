"""Training output window vs seams (THEORY.md results 4 and 5, the paper's Fig. 3).

The same U-Net is trained with the discriminative loss on random disks with training output
windows smaller than, equal to and larger than f^l (``allow_small_window`` of
:func:`~napari_shiftseg.training.train.train`), plus a same-padded ("zero padding") twin trained with a
large window. Each model segments a held-out image by exact tile-and-stitch, and we measure:

- **grid jump**: the mean embedding jump between neighbouring pixels of the same object across
  an f^l grid line, divided by the median of the jumps across the other f^l − 1 phase
  boundaries (inside the network's f^l cells). About 1 when the phases agree; large when the
  two phases that meet at the grid line (u_{f^l−1} and u_0) were never trained side by side
  (window = f^l).
- **phase jump**: the largest of those per-phase-boundary jumps over their median: catches the
  window < f^l case, where some phases were never trained at all and jump wherever they meet
  trained ones (still f^l-periodic, but not necessarily on the grid line itself).
- **tile jump**: jumps across tile borders over jumps elsewhere (same padding: large at every
  tile border whatever the tile size; valid padding + exact tiling: borders are not special).
- false splits, false merges and AP@0.5 of the stitched segmentation, and the max abs
  difference between stitched and whole-image embeddings.

Expected: the < and = windows show large phase/grid jumps and extra false splits on the f^l
grid; the > window does not; same padding shows tile-border seams and a stitched result that
differs from whole-image inference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..network.geometry import UNetGeometry
from ..training.train_options import TrainOptions
from ..util._errors import ShiftSegError
from ..util._options import with_overrides

__all__ = ["WindowCase", "default_cases", "cell_start", "phase_jumps", "tile_jump", "run_window_study",
           "evaluate_case", "format_table", "SETTINGS"]

#: (steps, lr, base channels, batch size) per mode.
SETTINGS = {"quick": (2000, 1e-3, 8, 4), "full": (6000, 5e-4, 16, 4)}
#: Data: random non-overlapping disks, larger than f^l = 8 so grid lines cut through objects.
DATA: dict[str, Any] = {"density": 0.1, "radius": 6, "radius_jitter": 1.0, "intensity_range": (0.6, 1.0)}


@dataclass(frozen=True)
class WindowCase:
    """One trained network of the study."""

    name: str
    window: int
    padding: str = "valid"


def default_cases(geometry: UNetGeometry) -> list[WindowCase]:
    """< f^l (half), = f^l, > f^l (twice) with valid padding, and same padding with 4·f^l."""
    g = geometry.grid
    return [WindowCase(f"window {max(1, g // 2)} < f^l", max(1, g // 2)),
            WindowCase(f"window {g} = f^l", g),
            WindowCase(f"window {2 * g} > f^l", 2 * g),
            WindowCase(f"same padding, window {4 * g}", 4 * g, "same")]


def cell_start(geometry: UNetGeometry) -> int:
    """Image position (mod f^l) where the network's f^l cells begin: ``geometry.cell_offset``.

    Output voxel j of a raw network output lies in bottom-level cell
    ``floor((j + h) / f^l)`` with ``h`` half of what the down path removes; exact tiles start on
    the global grid and keep raw outputs from ``crop_front``. 0 for f = 2 and l >= 3, 2 for l = 2.
    """
    return geometry.cell_offset


def _neighbour_jumps(emb: np.ndarray, gt: np.ndarray, axis: int):
    """(lower-side slices, same-object mask, jumps ‖e(p) − e(p−1)‖) of neighbours along ``axis``."""
    lo = [slice(None)] * gt.ndim
    hi = [slice(None)] * gt.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    same = (gt[tuple(hi)] == gt[tuple(lo)]) & (gt[tuple(hi)] > 0)
    emb_hi, emb_lo = (slice(None), *hi), (slice(None), *lo)  # the channel axis kept
    return tuple(lo), same, np.sqrt(((emb[emb_hi] - emb[emb_lo]) ** 2).sum(0))


def _pair_jumps(emb: np.ndarray, gt: np.ndarray):
    """Per axis: (positions p along that axis, jumps ‖e(p) − e(p−1)‖) for same-object pairs."""
    out = []
    for axis in range(gt.ndim):
        _, same, d = _neighbour_jumps(emb, gt, axis)
        pos = np.indices(same.shape)[axis] + 1  # the pair sits between p − 1 and p
        out.append((pos[same], d[same]))
    return out


def phase_jumps(emb: np.ndarray, gt: np.ndarray, geometry: UNetGeometry) -> np.ndarray:
    """Mean same-object embedding jump per phase boundary b = 0 … f^l − 1 (b = 0: the grid line).

    Boundary b lies between cell phases b − 1 and b (all axes pooled).
    """
    g, start = geometry.grid, cell_start(geometry)
    sums, counts = np.zeros(g), np.zeros(g)
    for pos, d in _pair_jumps(emb, gt):
        b = (pos - start) % g
        sums += np.bincount(b, weights=d, minlength=g)
        counts += np.bincount(b, minlength=g)
    return sums / np.maximum(counts, 1)


def tile_jump(emb: np.ndarray, gt: np.ndarray, tile: int) -> float:
    """Mean same-object jump across tile borders (multiples of ``tile``) over the mean elsewhere."""
    cross, inside = [], []
    for pos, d in _pair_jumps(emb, gt):
        border = pos % tile == 0
        cross.append(d[border])
        inside.append(d[~border])
    cross_all, inside_all = np.concatenate(cross), np.concatenate(inside)
    if not cross_all.size or not inside_all.size:
        return float("nan")
    return float(cross_all.mean() / max(inside_all.mean(), 1e-12))


def seam_image(emb: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per pixel: the largest same-object jump to its lower/right neighbour (2D, for figures)."""
    out = np.zeros(gt.shape, dtype=np.float32)
    for axis in range(gt.ndim):
        lo, same, d = _neighbour_jumps(emb, gt, axis)
        view = out[lo]
        np.maximum(view, d * same, out=view)
    return out


def training_data(shape=(256, 256), n: int = 4, seed: int = 0):
    """``n`` random-disk images (different seeds) for training."""
    from ..synthetic.synth import random_objects

    return [random_objects(shape, seed=seed + i, **DATA) for i in range(n)]


def test_data(shape=(256, 256), seed: int = 1000):
    from ..synthetic.synth import random_objects

    return random_objects(shape, seed=seed, **DATA)


def train_case(case: WindowCase, geometry: UNetGeometry, data, options, base: int,
               cancel: threading.Event | None = None,
               progress: Callable[[int, dict], None] | None = None):
    """Train one case's network with :func:`~napari_shiftseg.training.train.train`: ``options`` (a
    :class:`~napari_shiftseg.training.train_options.TrainOptions`) with the case's window, ``base``
    channels at the first level."""
    from ..network.unet import UNetConfig
    from ..training.train import train

    g = UNetGeometry(ndim=geometry.ndim, levels=geometry.levels, factor=geometry.factor,
                     convs_per_level=geometry.convs_per_level, kernel_size=geometry.kernel_size,
                     padding=case.padding)
    config = UNetConfig(geometry=g, base_channels=base)
    return train(data, config=config, options=options, output_window=case.window,
                 allow_small_window=True, cancel=cancel, progress=progress)


def evaluate_case(model, image, gt, tile: int, seed: int = 0, keep_arrays: bool = True) -> dict:
    """Seam and segmentation numbers of one trained model on a held-out image."""
    from ..imaging.metrics import evaluate
    from ..inference.evaluate import default_bandwidth
    from ..inference.instances import segment_instances
    from ..inference.predict import predict_embeddings, predict_plan, predict_whole

    g = model.geometry
    E = model.config.embed_dim
    whole = predict_whole(image, model, device="cpu")
    lazy = predict_embeddings(image, model, tile=tile, device="cpu", mode="exact")
    stitched = lazy.compute(scheduler="sync")
    used = int(predict_plan(image, model, tile=tile, mode="exact").tile[0])
    jumps = phase_jumps(stitched[:E], gt, g)
    inside = float(np.median(jumps[1:])) if len(jumps) > 1 else float(jumps[0])
    pred_lazy, _ = segment_instances(stitched, bandwidth=default_bandwidth(model), seed=seed,
                                     foreground=model.config.foreground_head)
    pred = np.asarray(pred_lazy.compute(scheduler="sync"))
    scores = evaluate(gt, pred)
    whole_pred, _ = segment_instances(whole, bandwidth=default_bandwidth(model), seed=seed,
                                      foreground=model.config.foreground_head)
    whole_scores = evaluate(gt, np.asarray(whole_pred.compute(scheduler="sync")))
    result = {
        "padding": g.padding, "tile": used,
        "grid_jump": float(jumps[0] / max(inside, 1e-12)),
        "grid_jump_abs": float(jumps[0]), "inside_jump_abs": inside,
        "phase_jump": float(jumps.max() / max(float(np.median(jumps)), 1e-12)),
        "worst_boundary": int(np.argmax(jumps)),
        "tile_jump": tile_jump(stitched[:E], gt, used),
        "phase_profile": [round(float(j), 4) for j in jumps],
        "false_splits": int(scores["false_splits"]), "false_merges": int(scores["false_merges"]),
        "ap50": float(scores["ap@0.5"]), "n_gt": int(scores["n_gt"]), "n_pred": int(scores["n_pred"]),
        "whole_false_splits": int(whole_scores["false_splits"]),
        "whole_ap50": float(whole_scores["ap@0.5"]),
        "max_abs_diff": float(np.abs(stitched - whole).max()),
        "rel_diff": float(np.abs(stitched - whole).max() / (np.abs(whole).max() or 1.0)),
    }
    if keep_arrays and gt.ndim == 2:
        if g.valid:
            start = cell_start(g)
            lines, kind = list(range(start or g.grid, gt.shape[0], g.grid)), f"f^l grid ({g.grid})"
        else:
            lines, kind = list(range(used, gt.shape[0], used)), f"tile borders ({used})"
        result["arrays"] = {"embeddings": stitched[:E], "gt": gt, "instances": pred,
                            "seam": seam_image(stitched[:E], gt), "lines": lines, "line_kind": kind}
    return result


@dataclass(frozen=True)
class StudySettings:
    """The window study's run: ``mode`` ("quick" or "full") picks steps, lr, base channels and
    batch size (:data:`SETTINGS`) unless given; ``tile`` defaults to 8 f^l; images are
    ``train_shape`` / ``test_shape``; ``seed`` seeds data and training."""

    mode: str = "quick"
    levels: int = 3
    steps: int | None = None
    lr: float | None = None
    base_channels: int | None = None
    batch_size: int | None = None
    tile: int | None = None
    seed: int = 0
    train_shape: tuple[int, ...] = (256, 256)
    test_shape: tuple[int, ...] = (256, 256)

    def __post_init__(self):
        if self.mode not in SETTINGS:
            raise ShiftSegError(f"mode must be one of {tuple(SETTINGS)}, got {self.mode!r}")


def run_window_study(study: StudySettings | None = None, cases=None, save_dir=None, references=(),
                     progress: Callable[[str], None] | None = None,
                     cancel: threading.Event | None = None, **overrides) -> dict:
    """Train every case and evaluate it; returns ``{"settings": ..., "cases": [...]}``.

    ``study`` (:class:`StudySettings`; ``overrides`` change its fields by name, e.g.
    ``mode="full"``) says how long to train and on what. With ``save_dir`` every trained model
    is saved there (``window_<w>_<padding>.safetensors``) so it can be inspected later
    (``shiftseg info``, the napari Inspect widget). ``references`` are extra ``(name, Model)``
    pairs evaluated the same way without training, e.g. the bundled model (trained much longer
    with a window far above f^l).
    """
    study = with_overrides(study or StudySettings(), "run_window_study", overrides)
    mode, levels, seed = study.mode, study.levels, study.seed
    train_shape, test_shape = study.train_shape, study.test_shape
    d_steps, d_lr, d_base, d_batch = SETTINGS[mode]
    steps, lr = study.steps or d_steps, study.lr or d_lr
    base, batch = study.base_channels or d_base, study.batch_size or d_batch
    geometry = UNetGeometry(ndim=2, levels=levels)
    tile = study.tile or 8 * geometry.grid
    options = TrainOptions(steps=steps, lr=lr, batch_size=batch, seed=seed)
    cases = cases or default_cases(geometry)
    data = training_data(train_shape, seed=seed)
    image, gt = test_data(test_shape, seed=seed + 1000)
    out = []
    for case in cases:
        if cancel is not None and cancel.is_set():
            break
        if progress:
            progress(f"training {case.name} ({steps} steps)")
        start = time.perf_counter()
        model, history = train_case(case, geometry, data, options, base, cancel)
        numbers = evaluate_case(model, image, gt, tile, seed)
        saved = {}
        if save_dir is not None:
            from ..network.modelio import save_model

            saved["model_file"] = str(save_model(
                model, Path(save_dir) / f"window_{case.window}_{case.padding}.safetensors"))
        row = {"name": case.name, "window": case.window, **numbers, **saved,
               "final_loss": model.meta.get("final_loss"),
               "seconds": round(time.perf_counter() - start, 1)}
        out.append(row)
        if progress:
            progress(f"{case.name}: grid jump {row['grid_jump']:.2f}, phase jump "
                     f"{row['phase_jump']:.2f}, tile jump {row['tile_jump']:.2f}, "
                     f"{row['false_splits']} false splits")
    for name, model in references:
        if cancel is not None and cancel.is_set():
            break
        if model.geometry.ndim != 2:
            continue
        start = time.perf_counter()
        numbers = evaluate_case(model, image, gt, tile, seed)
        window = (model.meta or {}).get("training_window") or [0]
        out.append({"name": name, "window": int(window[0]), **numbers,
                    "final_loss": (model.meta or {}).get("final_loss"),
                    "seconds": round(time.perf_counter() - start, 1)})
        if progress:
            progress(f"{name}: grid jump {out[-1]['grid_jump']:.2f}, {out[-1]['false_splits']} false splits")
    settings = {"mode": mode, "levels": levels, "f^l": geometry.grid, "steps": steps, "lr": lr,
                "base_channels": base, "batch_size": batch, "tile": tile, "seed": seed,
                "train_shape": list(train_shape), "test_shape": list(test_shape), "data": DATA}
    return {"settings": settings, "cases": out}


def format_table(study: dict) -> str:
    head = (f"{'case':<28} {'grid jump':>9} {'phase jump':>10} {'worst b':>7} {'tile jump':>9} "
            f"{'splits':>6} {'merges':>6} {'AP50':>5} {'whole splits':>12} {'max|diff|':>9}")
    lines = [head, "-" * len(head)]
    for c in study["cases"]:
        lines.append(f"{c['name']:<28} {c['grid_jump']:>9.2f} {c['phase_jump']:>10.2f} "
                     f"{c['worst_boundary']:>7} {c['tile_jump']:>9.2f} {c['false_splits']:>6} "
                     f"{c['false_merges']:>6} {c['ap50']:>5.2f} {c['whole_false_splits']:>12} "
                     f"{c['max_abs_diff']:>9.2g}")
    return "\n".join(lines)
