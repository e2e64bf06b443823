"""Figures of the reproduction experiments (matplotlib with the Agg backend only: no Qt, no
display; safe on a headless cluster node and inside the napari process).

Every function takes plain results (arrays, row dicts) and writes a PNG; :func:`sweep_axes`
draws onto given axes so the napari Sweep widget can reuse it on its own Qt canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["new_figure", "embeddings_rgb", "label_colors", "capacity_figure", "sweep_axes",
           "sweep_figure", "window_figure", "demo_figures"]


def new_figure(*args, **kwargs):
    """A matplotlib Figure that is not registered with pyplot (no GUI backend, no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # a core-only (headless) install
        from ..util._errors import ShiftSegError

        raise ShiftSegError("figures need matplotlib, which a core-only install leaves out: "
                            "pip install matplotlib (or napari-shiftseg[napari])") from None

    return Figure(*args, **kwargs)


def save(fig, path) -> Path:
    """Write ``fig`` as PNG through the Agg canvas (creating the folder)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def embeddings_rgb(emb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(3, *S) embeddings -> (*S, 3) RGB in [0, 1], scaled per channel over ``mask`` (or all).

    The paper shows E = 3 embeddings directly as colours; fewer channels are padded with 0.5.
    """
    emb = np.asarray(emb, dtype=np.float32)[:3]
    if emb.shape[0] < 3:
        emb = np.concatenate([emb, np.zeros((3 - emb.shape[0], *emb.shape[1:]), np.float32)])
    sel = emb[:, mask] if mask is not None and mask.any() else emb.reshape(3, -1)
    lo = np.percentile(sel, 1, axis=1)
    hi = np.percentile(sel, 99, axis=1)
    rgb = (emb - lo.reshape(3, *([1] * (emb.ndim - 1)))) / np.maximum(hi - lo, 1e-6).reshape(
        3, *([1] * (emb.ndim - 1)))
    return np.clip(np.moveaxis(rgb, 0, -1), 0, 1)


def label_colors(labels: np.ndarray, seed: int = 1) -> np.ndarray:
    """Random (but deterministic) colour per label id, black background: (*S, 3)."""
    labels = np.asarray(labels)
    n = int(labels.max()) + 1 if labels.size else 1
    rng = np.random.default_rng(seed)
    lut = rng.uniform(0.25, 1.0, (n, 3))
    lut[0] = 0
    return lut[labels]


def _box(ax, start: float, size: float, color="red"):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, ec=color, lw=1.2))


def capacity_figure(results, path) -> Path:
    """The paper's Fig. 2: per case input (valid output window in red), embeddings as RGB,
    instances (mean-shift clusters, one colour per cluster)."""
    results = [r for r in results if r.arrays]
    fig = new_figure(figsize=(9, 3 * max(len(results), 1)))
    for i, r in enumerate(results):
        a = r.arrays
        fg = a["labels"] > 0
        axes = [fig.add_subplot(len(results), 3, 3 * i + k + 1) for k in range(3)]
        axes[0].imshow(a["image"], cmap="gray", interpolation="nearest")
        _box(axes[0], a["context"], a["labels"].shape[0])
        axes[0].set_ylabel(r.case.name, fontsize=8)
        rgb = embeddings_rgb(a["embeddings"], fg)
        axes[1].imshow(rgb, interpolation="nearest")
        axes[2].imshow(label_colors(a["instances"]), interpolation="nearest")
        axes[0].set_title("input", fontsize=9)
        axes[1].set_title("embeddings (RGB)", fontsize=9)
        axes[2].set_title(f"clusters: {r.clusters} of {r.phases} possible", fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return save(fig, path)


def sweep_axes(ax, rows, grid: int, title: str | None = None):
    """Draw the poster's plot on ``ax``: false splits (blue, left) and AP@0.5 (red, right axis)
    against output tile size, with grey bars at multiples of f^l. Returns the twin axis."""
    tiles = np.array([r["tile"] for r in rows])
    splits = np.array([r["false_splits"] for r in rows], dtype=float)
    ap = np.array([r["ap50"] for r in rows], dtype=float)
    handles = []
    if len(tiles):
        lo, hi = tiles.min(), tiles.max()
        first = -(-lo // grid) * grid
        for i, t in enumerate(range(first, hi + 1, grid)):
            handles.append(ax.axvline(t, color="0.8", lw=4, zorder=0,
                                      label="nf^l tile" if i == 0 else None))
    (l1,) = ax.plot(tiles, splits, color="tab:blue", marker=".", label="False Splits")
    ax.set_xlabel("output tile size")
    ax.set_ylabel("false splits", color="tab:blue")
    ax.tick_params(axis="y", colors="tab:blue")
    # Counts: from 0, and at least 0..1 (all-zero splits must not give a -0.04..0.04 axis).
    ax.set_ylim(0, max(1.0, float(splits.max()) * 1.1) if len(splits) else 1.0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax2 = ax.twinx()
    (l2,) = ax2.plot(tiles, ap, color="tab:red", marker=".", label="AP 0.5")
    ax2.set_ylabel("AP@0.5", color="tab:red")
    ax2.tick_params(axis="y", colors="tab:red")
    if len(tiles) and np.isfinite(ap).any():
        span = max(0.05, float(np.nanmax(ap) - np.nanmin(ap)))
        ax2.set_ylim(max(0.0, np.nanmin(ap) - span), min(1.0, np.nanmax(ap) + span))
    ax.legend([l1, l2, *handles[:1]], ["False Splits", "AP 0.5", f"n·f^l tile (f^l = {grid})"][
        : 2 + bool(handles)], loc="lower left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return ax2


def sweep_figure(rows, grid: int, path, title: str | None = None) -> Path:
    """The sweep plot as a PNG (one panel per mode present in ``rows``)."""
    modes = list(dict.fromkeys(r["mode"] for r in rows)) or ["naive"]
    fig = new_figure(figsize=(6.5, 3.4 * len(modes)))
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(len(modes), 1, i + 1)
        sub = [r for r in rows if r["mode"] == mode]
        label = f"{mode} tiling" + (f" - {title}" if title else "")
        sweep_axes(ax, sub, grid, label)
    fig.tight_layout()
    return save(fig, path)


def window_figure(study, path) -> Path:
    """Window study: per trained case, embeddings (RGB) with the f^l grid, a seam map (embedding
    jump to the right/lower neighbour), and the stitched instances."""
    cases = [c for c in study["cases"] if c.get("arrays")]
    fig = new_figure(figsize=(10, 3.2 * max(len(cases), 1)))
    for i, c in enumerate(cases):
        a = c["arrays"]
        axes = [fig.add_subplot(len(cases), 3, 3 * i + k + 1) for k in range(3)]
        fg = a["gt"] > 0
        axes[0].imshow(embeddings_rgb(a["embeddings"], fg), interpolation="nearest")
        axes[1].imshow(a["seam"], cmap="magma", interpolation="nearest",
                       vmax=np.percentile(a["seam"], 99.5) or None)
        axes[2].imshow(label_colors(a["instances"]), interpolation="nearest")
        for ax in axes[:2]:
            for p in a["lines"]:
                ax.axhline(p - 0.5, color="cyan", lw=0.4, alpha=0.6)
                ax.axvline(p - 0.5, color="cyan", lw=0.4, alpha=0.6)
        axes[0].set_ylabel(c["name"], fontsize=8)
        axes[0].set_title("embeddings, lines: " + a["line_kind"], fontsize=8)
        axes[1].set_title(f"same-object jumps: grid {c['grid_jump']:.1f}x, tile border "
                          f"{c['tile_jump']:.1f}x", fontsize=8)
        axes[2].set_title(f"stitched: {c['false_splits']} false splits, AP50 {c['ap50']:.2f}",
                          fontsize=8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return save(fig, path)


def demo_figures(panels, path, title: str | None = None, columns: int = 3) -> Path:
    """Generic grid of image panels: ``panels`` is a list of dicts with ``image`` (2D or RGB),
    ``title``, optional ``cmap``, ``lines`` (x/y positions of the f^l grid), ``tile_lines``
    (tile borders) and ``vmax``."""
    rows = -(-len(panels) // columns)
    fig = new_figure(figsize=(3.6 * columns, 3.6 * rows))
    for i, p in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(p["image"], cmap=p.get("cmap", "gray"), interpolation="nearest",
                  vmax=p.get("vmax"))
        # dense grids (small f^l on a big slice) get fainter lines
        alpha = 0.7 if len(p.get("lines_x", ())) <= 32 else 0.3
        for y in p.get("lines_y", ()):
            ax.axhline(y - 0.5, color="cyan", lw=0.4, alpha=alpha)
        for x in p.get("lines_x", ()):
            ax.axvline(x - 0.5, color="cyan", lw=0.4, alpha=alpha)
        for y in p.get("tile_y", ()):
            ax.axhline(y - 0.5, color="red", lw=0.9, ls="--")
        for x in p.get("tile_x", ()):
            ax.axvline(x - 0.5, color="red", lw=0.9, ls="--")
        ax.set_title(p.get("title", ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)
