"""Capacity: how many same-looking objects can a U-Net tell apart? (Lemma 1, Corollaries 2-3,
the paper's Fig. 2.)

The experiment of the paper's notebooks: identical disks (radius 5) on a square lattice fill the
network's whole input (220² for l = 3, so the output is 132² and every output pixel sees pure
lattice); a U-Net is trained on that one image with the discriminative loss (batch size 1), and
we count how many different embeddings it gives the disks' *central pixels*:

- spacing 16 (a multiple of f^l = 8): every disk sits at the same phase, so every central pixel
  is computed by the same function from the same input: exactly **1** cluster, whatever the
  weights (Corollary 3);
- spacing 15 (co-prime with 8): the 9 x 9 disks of the window cover all 8 x 8 = 64 phases, and a
  trained net can reach up to f^(d·l) = **64** clusters (Corollary 2).

The count clusters the central-pixel embeddings by mean-shift with the segmentation bandwidth;
the bound for a given window is the number of distinct phases among the disks (``phases``).

Training here is a short dedicated loop on the fixed full-size image instead of
:func:`napari_shiftseg.training.train.train`: ``train`` reflect-pads every image at its border and takes
random crops (right for real data, and what inference does), but a reflected lattice is not
periodic, so border disks would no longer be same-looking, which is the premise of the
experiment. The loss functions are the package's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..inference.meanshift import assign_to_modes, mean_shift
from ..network.geometry import UNetGeometry
from ..network.modelio import Model
from ..network.unet import UNet, UNetConfig
from ..synthetic.synth import lattice
from ..training.loss import discriminative_loss, foreground_loss
from ..util._errors import ShiftSegError

__all__ = ["CapacityCase", "CapacityResult", "QUICK_CASES", "FULL_CASES", "lattice_setup",
           "train_lattice", "measure_capacity", "run_capacity", "format_table", "count_clusters"]

#: Output window the paper uses for l = 3 (220 → 132); the smallest raw output >= 128.
OUTPUT_WINDOW = 128
RADIUS = 5
#: Reference discriminative-loss margins (THEORY.md); the bandwidth is 2/3 delta_d as in
#: :func:`napari_shiftseg.inference.evaluate.default_bandwidth`.
DELTA_V, DELTA_D = 0.5, 3.0
BANDWIDTH = 2.0


@dataclass(frozen=True)
class CapacityCase:
    """One row of the capacity table."""

    spacing: int
    levels: int = 3
    upsampling: str = "learnt"
    ndim: int = 2
    factor: int = 2
    window: int = OUTPUT_WINDOW  # smallest raw output >= this is the (fixed) training window

    @property
    def name(self) -> str:
        return f"{self.ndim}D l={self.levels} {self.upsampling} spacing {self.spacing}"


#: Quick mode: the paper's Fig. 2 a/b/c, plus l = 2 (f^l = 4, capacity 16).
QUICK_CASES = (
    CapacityCase(16, 3, "learnt"),
    CapacityCase(15, 3, "learnt"),
    CapacityCase(15, 3, "nearest"),
    CapacityCase(16, 2, "learnt"),
    CapacityCase(15, 2, "learnt"),
)
#: Full mode adds nearest upsampling for every setting.
FULL_CASES = QUICK_CASES + (CapacityCase(16, 3, "nearest"), CapacityCase(15, 2, "nearest"))


@dataclass
class CapacityResult:
    """Numbers (and arrays for the figure) of one case."""

    case: CapacityCase
    capacity: int              # f^(d·l)
    disks: int                 # alike disks whose central pixel is in the output window
    phases: int                # distinct phases among them: the most clusters possible here
    clusters: int              # distinct embeddings of their central pixels
    steps: int
    final_loss: float | None
    seconds: float
    min_mode_distance: float   # smallest distance between two cluster centres (nan if one)
    arrays: dict = field(default_factory=dict, repr=False)

    def row(self) -> dict:
        """Flat, JSON/CSV-friendly record (no arrays)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("case", "arrays")}
        return {**asdict(self.case), "case": self.case.name, **data}


def _geometry(case: CapacityCase) -> UNetGeometry:
    return UNetGeometry(ndim=case.ndim, levels=case.levels, factor=case.factor)


def lattice_setup(geometry: UNetGeometry, spacing: int, output_window: int = OUTPUT_WINDOW,
                  radius: float = RADIUS):
    """The network-input lattice image, its output-window labels and the disks' central pixels.

    Returns
    -------
    image : numpy.ndarray
        float32 input image (valid input size: 220² for l = 3, f = 2), exactly periodic.
    labels : numpy.ndarray
        int32 labels of the output window (132² for l = 3).
    centres : numpy.ndarray
        (N, d) int output-window coordinates of the central pixels of all disks whose centre
        lies in the output window.
    """
    size = geometry.training_input_size(output_window)
    out = geometry.output_size(size)
    shape = (size,) * geometry.ndim
    image, labels = lattice(shape, spacing, radius=radius)
    c = geometry.context_per_side
    window = (slice(c, c + out),) * geometry.ndim
    # The lattice's default offset (spacing // 2); centres are offset + k·spacing per axis.
    ticks = np.arange(spacing // 2, size, spacing) - c
    ticks = ticks[(ticks >= 0) & (ticks < out)]
    centres = np.stack(np.meshgrid(*([ticks] * geometry.ndim), indexing="ij"), -1).reshape(-1, geometry.ndim)
    return image, labels[window], centres


def _config(case: CapacityCase, base_channels: int) -> UNetConfig:
    return UNetConfig(geometry=_geometry(case), base_channels=base_channels, embed_dim=3,
                      upsampling=case.upsampling, foreground_head=True)


def train_lattice(case: CapacityCase, steps: int = 1000, lr: float = 1e-3, base_channels: int = 16,
                  seed: int = 0, progress: Callable[[int, float], None] | None = None,
                  cancel: threading.Event | None = None) -> tuple[Model, dict]:
    """Train a U-Net on the case's lattice image (batch size 1, the whole image every step).

    Returns the model (eval mode) and a history dict with ``loss`` per step and ``seconds``.
    """
    config = _config(case, base_channels)
    image, labels, _ = lattice_setup(config.geometry, case.spacing, case.window)
    x = torch.from_numpy(image)[None, None]
    y = torch.from_numpy(labels.astype(np.int64))[None]
    losses: list[float] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet(config).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for step in range(1, int(steps) + 1):
            if cancel is not None and cancel.is_set():
                break
            out = net(x)
            loss, _ = discriminative_loss(out[:, :3], y, delta_v=DELTA_V, delta_d=DELTA_D)
            loss = loss + foreground_loss(out[:, 3], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, losses[-1])
    net.eval()
    meta = {"normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
            "training_window": [labels.shape[0]] * case.ndim, "steps": len(losses),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "loss": {"delta_v": DELTA_V, "delta_d": DELTA_D}, "bandwidth": BANDWIDTH,
            "training_data": f"lattice spacing {case.spacing} radius {RADIUS}", "seed": seed}
    return Model(net, meta), {"loss": losses, "seconds": time.perf_counter() - start}


def count_clusters(points: np.ndarray, bandwidth: float = BANDWIDTH) -> tuple[int, np.ndarray]:
    """Number of distinct embeddings among ``points`` (N, E): mean-shift modes, every point a seed.

    Returns the count and the (K, E) modes.
    """
    modes = mean_shift(np.ascontiguousarray(points, dtype=np.float32), bandwidth,
                       seeds=np.ascontiguousarray(points, dtype=np.float32))
    return int(len(modes)), modes


def _instances(out: np.ndarray, embed_dim: int, bandwidth: float, seed: int = 0) -> np.ndarray:
    """Cluster ids (no connected components: same-looking disks keep one colour) of the output."""
    emb, fg = out[:embed_dim], out[embed_dim] > 0
    clusters = np.zeros(fg.shape, dtype=np.int32)
    if fg.any():
        points = np.ascontiguousarray(emb[:, fg].T)
        modes = mean_shift(points, bandwidth, n_seeds=500, seed=seed)
        clusters[fg] = assign_to_modes(points, modes)
    return clusters


def measure_capacity(model: Model, spacing: int, bandwidth: float = BANDWIDTH,
                     keep_arrays: bool = True, output_window: int = OUTPUT_WINDOW) -> dict:
    """Count the clusters a model gives the central pixels of a lattice with ``spacing``."""
    g = model.geometry
    if g.ndim != 2 and keep_arrays:
        keep_arrays = False  # the figure is 2D only; counting works in 3D too
    if not g.valid:
        raise ShiftSegError("the capacity experiment needs a valid-padded model (same padding "
                            "makes the output location-aware and the count meaningless)")
    if model.config.embed_dim < 1:
        raise ShiftSegError("the model has no embedding channels")
    image, labels, centres = lattice_setup(g, spacing, output_window)
    with torch.inference_mode():
        out = model.net.eval()(torch.from_numpy(image)[None, None])[0].float().numpy()
    emb = out[: model.config.embed_dim]
    at_centres = (slice(None), *centres.T)
    points = emb[at_centres].T
    clusters, modes = count_clusters(points, bandwidth)
    phases = len({tuple(p) for p in (centres % g.grid).tolist()})
    dist = np.linalg.norm(modes[:, None] - modes[None], axis=-1)
    min_mode = float(dist[np.triu_indices(len(modes), 1)].min()) if len(modes) > 1 else float("nan")
    result = {"capacity": g.capacity, "disks": int(len(centres)), "phases": phases,
              "clusters": clusters, "min_mode_distance": min_mode}
    if keep_arrays:
        result["arrays"] = {"image": image, "labels": labels, "embeddings": emb,
                            "instances": _instances(out, model.config.embed_dim, bandwidth)
                            if model.config.foreground_head
                            else labels, "context": g.context_per_side}
    return result


def run_capacity(cases=QUICK_CASES, steps: int = 1000, lr: float = 1e-3, base_channels: int = 16,
                 seed: int = 0, model: Model | None = None,
                 progress: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> list[CapacityResult]:
    """Train (or, with ``model``, just evaluate) every case and count its clusters.

    With ``model`` the cases' spacings are evaluated with that network (its geometry and
    upsampling replace the cases').
    """
    results = []
    for case in cases:
        if cancel is not None and cancel.is_set():
            break
        start = time.perf_counter()
        if model is None:
            if progress:
                progress(f"training {case.name} ({steps} steps)")
            net, history = train_lattice(case, steps, lr, base_channels, seed, cancel=cancel)
            final = net.meta["final_loss"]
            done = len(history["loss"])
        else:
            g = model.geometry
            # 3D: a 64³ output window (4+ disks per axis) keeps the input small enough for a CPU
            window = case.window if g.ndim == 2 else min(case.window, 64)
            case = CapacityCase(case.spacing, g.levels, model.config.upsampling, g.ndim, g.factor,
                                window)
            net, final, done = model, model.meta.get("final_loss"), int(model.meta.get("steps", 0))
        numbers = measure_capacity(net, case.spacing, output_window=case.window)
        result = CapacityResult(case=case, steps=done, final_loss=final,
                                seconds=round(time.perf_counter() - start, 1), **numbers)
        results.append(result)
        if progress:
            progress(f"{case.name}: {result.clusters} clusters of {result.phases} possible "
                     f"({result.disks} disks, capacity {result.capacity})")
    return results


def format_table(results: list[CapacityResult]) -> str:
    """Plain-text table: one line per case."""
    head = f"{'case':<34} {'f^(dl)':>6} {'disks':>5} {'phases':>6} {'clusters':>8} {'of bound':>8} {'steps':>6} {'loss':>7} {'s':>6}"  # noqa: E501 - one table header
    lines = [head, "-" * len(head)]
    for r in results:
        frac = f"{100 * r.clusters / r.phases:.0f}%" if r.phases else "-"
        loss = f"{r.final_loss:.3f}" if r.final_loss is not None else "-"
        lines.append(f"{r.case.name:<34} {r.capacity:>6} {r.disks:>5} {r.phases:>6} {r.clusters:>8} "
                     f"{frac:>8} {r.steps:>6} {loss:>7} {r.seconds:>6.1f}")
    return "\n".join(lines)
