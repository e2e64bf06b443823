"""The Inspect widget's jobs and the Segment widget's tile line: how tiles are cut and where
stitching leaves seams. Plain functions with the :mod:`._worker` signature, no Qt, no napari."""

from __future__ import annotations

from ..inference import diagnostics, predict
from ..util import progress
from ._common import ModelCache


def describe_tile(geometry, requested: int, mode: str) -> str:
    """The live tile line: snapped n·f^l tile, its input window and compute amplification."""
    g = geometry
    if requested in (0, "auto"):
        return "auto: the largest n·f^l tile that fits the device's memory (chosen at Run)"
    t = g.snap_tile(requested)
    if g.isotropic:
        text = f"{t} = {t // g.grid}·f^l → input {g.tile_input_size(t)}, compute ×{g.amplification(t):.2f}"
    else:  # one tile per axis, each a multiple of that axis' grid
        text = f"{t} on the grid {g.grids} → input {g.tile_input_size(t)}, compute ×{g.amplification(t):.2f}"
    if mode != "exact":
        text += f"; {mode} mode uses {requested} as given (not exact)"
    return text


def seams(report, cancel, image, model_path, tile: int, mode: str, device: str,
          cache: ModelCache) -> dict:
    """Tile boundaries and embedding jumps across them for one tiling mode."""

    model = cache.get(model_path, device)
    plan = predict.predict_plan(image, model, tile, mode)
    embeddings = predict.predict_embeddings(image, model, plan=plan, device=device)
    (embeddings,) = progress.compute(embeddings, progress=lambda d, t: report(d, t, "tiles"),
                                     cancel=cancel)
    found = diagnostics.run_diagnostics(embeddings, image, model, plan, device=device,
                                        kinds=("tile_boundaries", "seams"))
    return dict(zip(found, progress.compute(*found.values(), cancel=cancel)))


def stitch_check(report, cancel, image, model_path, tile: int, mode: str, device: str,
                 cache: ModelCache) -> tuple[float, str]:
    """Max |stitched − whole-image| embedding difference (0 for exact tiling), and where the
    tiles start relative to the f^l grid."""

    model = cache.get(model_path, device)
    report(0, 1, "stitch check")
    # Where the tiles start on the f^l grid explains the number (e.g. naive beating blend).
    return diagnostics.stitch_check(image, model, tile, mode, device=device), \
        predict.predict_plan(image, model, tile, mode).grid_note
