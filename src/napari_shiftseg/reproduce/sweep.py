"""Tile-size sweep: the poster's BBBC006 plot (false splits and AP@0.5 against output tile size).

For every output tile size the image is segmented by one session run
(:meth:`Session.run <napari_shiftseg.inference.session.Session.run>`, as the Segment widget's
Run): predicted tile by tile, the *stitched* embeddings of the whole image clustered (never per
tile), and the instances scored against the ground truth
(:func:`~napari_shiftseg.imaging.metrics.evaluate`). The stitched embeddings are also compared
with whole-image inference (a session run with one tile covering the image).

- ``naive`` mode uses the tile as given: tiles that are not n·f^l put tile origins off the global
  f^l grid, neighbouring tiles disagree at their borders, objects cut by a border are split.
  Only n·f^l tiles are exact (if the image size is a multiple of f^l, so that naive's last tile,
  moved inward to the image border, stays on the grid) and give the minima of the poster.
- ``exact`` mode snaps every tile to n·f^l on the global grid: every size is identical to
  whole-image inference (Corollary 4), the curve is flat.

Same-padded networks have seams at every tile border whatever the size (THEORY.md result 5);
run the sweep with such a model to see it.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..util._errors import ShiftSegError

__all__ = ["run_sweep", "parse_tiles", "write_csv", "summarize", "COLUMNS", "MODES"]

MODES = ("naive", "exact")
COLUMNS = ("mode", "tile", "tile_used", "on_grid", "false_splits", "false_merges", "ap50",
           "n_gt", "n_pred", "max_abs_diff", "rel_diff", "seconds")


def parse_tiles(text: str) -> list[int]:
    """``'A:B[:STEP]'`` (inclusive) or ``'A,B,C'`` -> sorted unique tile sizes."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if step < 1 or stop < start:
                raise ValueError
            tiles = list(range(start, stop + 1, step))
        else:
            tiles = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ShiftSegError(f"tiles must look like 112:148, 112:148:2 or 96,128,160 (inclusive); "
                            f"got {text!r}") from None
    if not tiles or min(tiles) < 1:
        raise ShiftSegError(f"tile sizes must be positive, got {text!r}")
    return sorted(set(tiles))


def _check_inputs(image, labels, model, tiles, mode):
    from ..files.data import validate_labels

    if mode not in MODES:
        raise ShiftSegError(f"sweep mode must be one of {MODES}, got {mode!r}")
    g = model.geometry
    if image.ndim != g.ndim:
        raise ShiftSegError(f"the model is {g.ndim}D but the image is {image.ndim}D (shape {image.shape})")
    labels = validate_labels(np.asarray(labels))
    if labels.shape != tuple(image.shape):
        raise ShiftSegError(f"image shape {tuple(image.shape)} and labels shape {labels.shape} differ; "
                            "they must match pixel for pixel")
    tiles = [int(t) for t in tiles]
    if not tiles or min(tiles) < 1:
        raise ShiftSegError(f"tile sizes must be positive, got {tiles}")
    if mode == "exact" and min(tiles) < g.grid:
        raise ShiftSegError(f"exact tiling needs tiles of at least f^l = {g.grid}, got {min(tiles)}")
    return labels, tiles


def _score(pred, gt) -> dict:
    from ..imaging.metrics import evaluate

    scores = evaluate(gt, pred, thresholds=(0.5,))
    return {"false_splits": int(scores["false_splits"]), "false_merges": int(scores["false_merges"]),
            "ap50": float(scores["ap@0.5"]), "n_gt": int(scores["n_gt"]),
            "n_pred": int(scores["n_pred"]), "labels": pred}


def run_sweep(image, labels, model, tiles: Sequence[int], mode: str = "naive", device: str = "cpu",
              settings=None, *, progress: Callable[[int, int, str], None] | None = None,
              cancel: threading.Event | None = None, keep_labels: bool = False, **overrides) -> dict:
    """Tile-and-stitch the image for every tile size and score the stitched segmentation.

    Parameters
    ----------
    image : array-like
        2D or 3D image like the model (numpy, dask or zarr).
    labels : array-like
        Ground-truth instance labels of the same shape (0 = background).
    model : Model
        Trained model (:func:`~napari_shiftseg.network.modelio.load_model`).
    tiles : sequence of int
        Output tile sizes (the same on every axis).
    mode : {"naive", "exact"}
        Tiling mode, see the module docstring.
    device : str
        Torch device.
    settings : SegmentationSettings, optional
        How embeddings become instances, identical for every tile size; default the model's
        recorded (tuned) settings (:meth:`~napari_shiftseg.network.settings.SegmentationSettings.of`).
    progress : callable(done, total, message), optional
        Called before each tile size and once at the end.
    cancel : threading.Event, optional
        Checked between (and, through :func:`~napari_shiftseg.util.progress.compute`, inside) tile
        sizes; raises :class:`~napari_shiftseg.util.progress.Cancelled`.
    keep_labels : bool
        Keep every tile size's instance labels (``result["labels"][tile]``).
    **overrides
        Fields of ``settings`` (``bandwidth=1.5``, ``min_size=20``) or of the clustering
        (:class:`~napari_shiftseg.inference.segment_options.ClusterOptions`, e.g. ``seed=2``) to change;
        None keeps the model's value.

    Returns
    -------
    dict
        ``rows`` (one dict per tile size, keys :data:`COLUMNS`), ``whole`` (scores of whole-image
        inference), ``grid`` (f^l), ``mode``, ``shape`` and optionally ``labels``.
    """
    from ..inference.predict import predict_plan
    from ..inference.segment_options import SegmentOptions, settings_and_clustering
    from ..inference.session import WHOLE, Session
    from ..network.settings import SegmentationSettings
    from ..util.progress import Cancelled

    labels, tiles = _check_inputs(image, labels, model, tiles, mode)
    g = model.geometry
    # The model's own (tuned) settings, identical for every tile size; the caller's win.
    settings, clustering = settings_and_clustering(
        settings or SegmentationSettings.of(model), None,
        {k: v for k, v in overrides.items() if v is not None}, "run_sweep")
    total = len(tiles) + 1
    # Each tile size is one session run (as the Segment widget's Run), at the image's own scale.
    options = SegmentOptions(device=device, mode=mode, settings=settings, clustering=clustering)

    def segmented(tile, tile_mode):
        return Session(image, model, options.with_overrides(tile=tile, mode=tile_mode)).run(cancel=cancel,
                                                                                            maps=False)

    def tell(done, message):
        if progress is not None:
            progress(done, total, message)

    def check_cancel():
        if cancel is not None and cancel.is_set():
            raise Cancelled("sweep cancelled")

    tell(0, "whole-image reference")
    start = time.perf_counter()
    reference = segmented(WHOLE, "exact")
    whole = reference.embeddings
    scale = float(np.abs(whole).max()) or 1.0
    whole_scores = _score(reference.labels, labels)
    whole_labels = whole_scores.pop("labels")
    kept: dict[str | int, np.ndarray] = {"whole": whole_labels} if keep_labels else {}
    whole_scores["seconds"] = round(time.perf_counter() - start, 2)
    rows = []
    for i, tile in enumerate(tiles, 1):
        check_cancel()
        tell(i, f"{mode} tiles of {tile}")
        start = time.perf_counter()
        run = segmented(tile, mode)
        diff = float(np.abs(run.embeddings - whole).max())
        scores = _score(run.labels, labels)
        pred = scores.pop("labels")
        if keep_labels:
            kept[tile] = pred
        used = int(predict_plan(image, model, tile=tile, mode=mode).tile[0])
        rows.append({"mode": mode, "tile": tile, "tile_used": used, "on_grid": tile % g.grid == 0,
                     **scores, "max_abs_diff": diff, "rel_diff": diff / scale,
                     "seconds": round(time.perf_counter() - start, 2)})
    tell(total, "done")
    result = {"rows": rows, "whole": whole_scores, "grid": g.grid, "mode": mode,
              "shape": tuple(int(s) for s in image.shape)}
    if keep_labels:
        result["labels"] = kept
    return result


def summarize(rows) -> dict:
    """Mean false splits / AP@0.5 / max diff over on-grid (n·f^l) and off-grid tile sizes, per mode."""
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for kind, keep in (("on_grid", True), ("off_grid", False)):
            sub = [r for r in rows if r["mode"] == mode and bool(r["on_grid"]) == keep]
            if sub:
                out[f"{mode} {kind}"] = {
                    "sizes": len(sub),
                    "false_splits": float(np.mean([r["false_splits"] for r in sub])),
                    "false_splits_range": [int(min(r["false_splits"] for r in sub)),
                                           int(max(r["false_splits"] for r in sub))],
                    "ap50": float(np.mean([r["ap50"] for r in sub])),
                    "ap50_range": [float(min(r["ap50"] for r in sub)), float(max(r["ap50"] for r in sub))],
                    "max_rel_diff": float(max(r["rel_diff"] for r in sub)),
                }
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for key, s in summary.items():
        lines.append(f"{key:<16} {s['sizes']:>3} sizes: false splits {s['false_splits']:.1f} "
                     f"({s['false_splits_range'][0]}-{s['false_splits_range'][1]}), AP@0.5 "
                     f"{s['ap50']:.3f} ({s['ap50_range'][0]:.3f}-{s['ap50_range'][1]:.3f}), "
                     f"max rel diff {s['max_rel_diff']:.2g}")
    return "\n".join(lines)


def write_csv(rows, path) -> Path:
    """One line per (mode, tile size), columns :data:`COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def format_table(rows) -> str:
    """Plain-text table of sweep rows."""
    head = f"{'mode':<6} {'tile':>5} {'used':>5} {'grid':>4} {'splits':>6} {'merges':>6} {'AP50':>6} {'n_pred':>6} {'max|diff|':>10} {'rel':>9} {'s':>6}"  # noqa: E501 - one table header
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['mode']:<6} {r['tile']:>5} {r['tile_used']:>5} {'*' if r['on_grid'] else '':>4} "
                     f"{r['false_splits']:>6} {r['false_merges']:>6} {r['ap50']:>6.3f} {r['n_pred']:>6} "
                     f"{r['max_abs_diff']:>10.3g} {r['rel_diff']:>9.2g} {r['seconds']:>6.1f}")
    return "\n".join(lines)
