"""Benchmark: napari_shiftseg.inference.meanshift against scikit-learn's MeanShift(bin_seeding=True).

The data imitate trained embeddings: tight Gaussian blobs (std 0.3, one per instance) in
3-D whose centres are at least 4 apart. Both methods get the same bandwidth and label every
point; the table reports run times, the agreement of the labelings (ARI) and each one's ARI
against the true blob labels.

With 800 blobs the columns "one round" show the reference's seeding alone (1000 random seeds):
it leaves about exp(-1000/800) = 29 % of the clusters without a mode, which the re-seeding of
:func:`~napari_shiftseg.inference.meanshift.mean_shift` finds.

Run: ``python benchmarks/bench_meanshift.py [--n 200000 1000000] [--clusters 30 800] [--threads 2]``

``--volumes`` compares instead the two ways :func:`~napari_shiftseg.inference.clustering.cluster_embeddings`
finds modes on spatial embeddings of synthetic 3D nuclei (``bench_scaling.py``'s volumes: V =
``--base``, doubled one axis at a time per ``--scales``): the global subsample of at most 50k
points, and blockwise at a fixed density (issue 27; forced at every size, so also where the
global path would still run). Per size: time, modes, ARI between the two labelings (nearest
mode of every foreground voxel), the fraction of true nuclei found (a cluster of IoU > 0.5 with
the nucleus, one to one) by each, and as a yardstick the ARI of the global path against itself
with another sampling seed (its subsample noise). ``--embeddings model`` predicts them with the
bundled 3D model on the CPU (a minute per 8 Mvoxel here); ``ideal`` makes them from the true
labels (every voxel at its nucleus's centre + N(0, 0.3), what a perfect spatial head would give),
which is fast at any size. ``--dense`` adds the global path at the blockwise density (max_points
= density x foreground: slow at the largest sizes).

    python benchmarks/bench_meanshift.py --volumes --base 32 128 128 --scales 1 8 32
    python benchmarks/bench_meanshift.py --volumes --embeddings ideal --scales 1 4 16
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from sklearn.cluster import MeanShift
from sklearn.metrics import adjusted_rand_score

from napari_shiftseg.inference.meanshift import assign_to_modes, mean_shift


def make_blobs(n_points, n_clusters, dim=3, std=0.3, min_separation=4.0, seed=0):
    """Blobs with centres drawn uniformly in a cube, rejecting centres that come too close."""
    rng = np.random.default_rng(seed)
    side = min_separation * n_clusters ** (1 / dim) * 1.5
    centres = []
    while len(centres) < n_clusters:
        candidate = rng.uniform(0, side, dim)
        if all(np.linalg.norm(candidate - c) >= min_separation for c in centres):
            centres.append(candidate)
    truth = rng.integers(0, n_clusters, n_points)
    points = np.asarray(centres)[truth] + rng.normal(scale=std, size=(n_points, dim))
    return points.astype(np.float32), truth


def timed(function, repeats):
    """Return (result, best wall time in seconds over ``repeats`` runs).

    The best of a few runs is reported because these machines are shared: slower runs
    measure the neighbours, not the code.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, min(times)


def run(n_points, n_clusters, bandwidth, repeats, seed=0):
    """Time both methods on one data set; return a dict of the table's columns."""
    points, truth = make_blobs(n_points, n_clusters, seed=seed)
    # Warm-up: the first torch call of a process pays one-off initialisation costs.
    mean_shift(points[:1000], bandwidth)

    def ours(bin_size):
        return lambda: assign_to_modes(points, mean_shift(points, bandwidth, bin_size=bin_size))

    ours_labels, t_ours = timed(ours(0.25), repeats)
    exact_labels, t_exact = timed(ours(None), repeats)
    # The reference's seeding alone (1000 random seeds, no re-seeding): misses clusters once
    # there are several hundred of them (issue 8: crowded nuclei).
    one_round = assign_to_modes(points, mean_shift(points, bandwidth, reseed_rounds=0))
    sklearn_labels, t_sklearn = timed(
        lambda: MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(points).labels_, repeats
    )
    return {
        "N": n_points,
        "clusters": n_clusters,
        "modes ours": int(ours_labels.max()),
        "modes sklearn": int(sklearn_labels.max() + 1),
        "modes one round": int(one_round.max()),
        "t ours [s]": t_ours,
        "t ours exact [s]": t_exact,
        "t sklearn [s]": t_sklearn,
        "speed-up": t_sklearn / t_ours,
        "speed-up exact": t_sklearn / t_exact,
        "ARI ours/sklearn": adjusted_rand_score(sklearn_labels, ours_labels),
        "ARI ours/exact": adjusted_rand_score(exact_labels, ours_labels),
        "ARI ours/truth": adjusted_rand_score(truth, ours_labels),
        "ARI sklearn/truth": adjusted_rand_score(truth, sklearn_labels),
        "ARI one round/truth": adjusted_rand_score(truth, one_round),
    }


# --------------------------------------------------------------------------- --volumes


def ideal_embeddings(labels, scale, noise=0.3, seed=0):
    """Spatial embeddings of a perfect head: each nucleus's voxels at ``scale`` x its centre
    (+ noise), background at its own position; foreground logit +-6 last. Built plane by plane."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    n = int(labels.max())
    centres = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, np.float32), labels, range(1, n + 1)))
    emb = np.empty((labels.ndim + 1, *labels.shape), np.float32)
    for z in range(labels.shape[0]):
        plane = labels[z]
        pos = np.indices(plane.shape, np.float32)
        emb[0, z], emb[1, z], emb[2, z] = z, pos[0], pos[1]
        fg = plane > 0
        emb[:3, z][:, fg] = centres[plane[fg] - 1].T
        emb[:3, z] = scale * emb[:3, z] + rng.normal(0, noise, (3, *plane.shape)).astype(np.float32)
        emb[3, z] = np.where(fg, 6.0, -6.0)
    return emb


def nuclei_found(truth, clusters) -> float:
    """Fraction of true nuclei matched one to one by a cluster (IoU > 0.5)."""
    from napari_shiftseg.imaging.metrics import match

    return match(truth, clusters, 0.5).recall


def run_volume(shape, embeddings: str, dense: bool) -> list[dict]:
    """Global vs blockwise modes on one volume; returns the table's columns."""
    from bench_scaling import RADIUS, SEED
    from sklearn.metrics import adjusted_rand_score as ari

    from napari_shiftseg.inference.clustering import BlockwiseOptions, assign_clusters, cluster_embeddings
    from napari_shiftseg.network.modelio import load_bundled
    from napari_shiftseg.network.settings import SegmentationSettings
    from napari_shiftseg.synthetic.synth import nuclei

    model = load_bundled(3)
    settings = SegmentationSettings.of(model)
    scale = model.config.position_scale
    start = time.perf_counter()
    image, truth = nuclei(shape, seed=SEED, radius=RADIUS)
    made = time.perf_counter() - start
    start = time.perf_counter()
    if embeddings == "model":
        from napari_shiftseg.inference.predict import predict_embeddings

        emb = predict_embeddings(image, model, tile=64, device="cpu").compute()
    else:
        emb = ideal_embeddings(truth, scale)
    predicted = time.perf_counter() - start
    del image
    fg = emb[-1] > math.log(settings.fg_threshold / (1 - settings.fg_threshold))
    n_fg = int(fg.sum())

    def cluster(**kwargs):
        start = time.perf_counter()
        found = cluster_embeddings(emb, settings.bandwidth, settings.fg_threshold, **kwargs)
        seconds = time.perf_counter() - start
        return found, seconds, assign_clusters(emb, found).compute()

    blockwise = BlockwiseOptions(min_foreground=0)
    cluster_embeddings(emb[:, :8, :32, :32], settings.bandwidth)  # torch's one-off start-up costs
    runs = {"global": cluster(), "blockwise": cluster(position_scale=scale, blockwise=blockwise),
            "global, seed 1": cluster(seed=1)}
    if dense:
        runs["global, blockwise density"] = cluster(max_points=max(1, round(blockwise.density * n_fg)))
    ref = runs["global"][2][fg]
    dense_ids = runs["global, blockwise density"][2][fg] if dense else None
    head = {"shape": "x".join(map(str, shape)), "Mvoxel": math.prod(shape) / 1e6, "nuclei": int(truth.max()),
            "fg Mvoxel": n_fg / 1e6, f"{embeddings} s": made + predicted}
    rows = []
    for name, (found, seconds, ids) in runs.items():
        rows.append({**head, "method": name + (f" ({found.blocks} cubes)" if found.blocks else ""),
                     "points": found.n_points, "modes": found.n_clusters, "cluster s": seconds,
                     "ARI vs global": ari(ref, ids[fg]) if name != "global" else 1.0,
                     **({"ARI vs global at density": ari(dense_ids, ids[fg])} if dense_ids is not None else {}),
                     "nuclei found": nuclei_found(truth, ids), "load": os.getloadavg()[0]})
        head = {k: "" for k in head}
    return rows


def volumes(args) -> None:
    from bench_scaling import scaled_shape

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load = os.getloadavg()[0]
    rows = []
    for s in sorted(set(args.scales)):
        rows += run_volume(scaled_shape(args.base, s), args.embeddings, args.dense)
        print(f"  {rows[-1]['method']} done", flush=True)
    print_table(rows)
    print(f"\n{args.embeddings} embeddings of synth.nuclei (bench_scaling's volumes; '{args.embeddings} s' "
          f"includes making the volume), the bundled 3D model's settings, torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at start (and after each run: 'load'); 'nuclei "
          f"found': true nuclei matched one to one by a cluster at IoU > 0.5; ARI over the foreground voxels "
          f"(nearest mode of each); total {time.perf_counter() - began:.0f} s")


def print_table(rows) -> None:
    """The rows (dicts with the same keys) as a markdown table, floats to 3 decimals."""
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


def main(argv=None):
    """Parse arguments, run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200_000])
    parser.add_argument("--clusters", type=int, nargs="+", default=[30, 800])
    parser.add_argument("--bandwidth", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volumes", action="store_true", help="global vs blockwise modes on nuclei volumes")
    parser.add_argument("--base", type=int, nargs=3, default=[32, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 8, 32], help="multiples of --base")
    parser.add_argument("--embeddings", choices=("model", "ideal"), default="model")
    parser.add_argument("--dense", action="store_true", help="also the global path at the blockwise density")
    args = parser.parse_args(argv)
    if args.volumes:
        volumes(args)
        return
    torch.set_num_threads(args.threads)
    rows = [run(n, k, args.bandwidth, args.repeats) for k in args.clusters for n in args.n]
    print_table(rows)
    print(
        f"\nbandwidth {args.bandwidth}, best of {args.repeats} runs, torch threads "
        f"{args.threads}, torch {torch.__version__}, CPU; 'ours' = mean_shift + "
        "assign_to_modes (bin_size 0.25), 'exact' = bin_size None"
    )


if __name__ == "__main__":
    main()
