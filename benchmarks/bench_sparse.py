"""Benchmark: training on sparse labels (a third of the nuclei painted) vs complete labels.

The user paints every nucleus in one part of each image (a third of its width, widened to whole
nuclei) and marks that part as the annotated region; the other nuclei stay unpainted. Two runs
with the same defaults (``train.train``, new network) on the BBBC007 *train* split:

* ``complete``: every nucleus painted;
* ``sparse``: only the nuclei touching the left third painted, ``annotated`` = that region;
* ``sparse, no region``: the same labels trained as if complete (what happened before issue 10:
  the unpainted nuclei are taught as background).

Scores on the BBBC007 *test* split (never trained or tuned on).

    python benchmarks/bench_sparse.py [--steps 1500] [--runs complete sparse naive] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def sparse_pair(labels: np.ndarray, fraction: float = 1 / 3):
    """(labels with only the nuclei touching the first ``fraction`` of columns, that region)."""
    cut = int(labels.shape[1] * fraction)
    painted = np.unique(labels[:, :cut])
    painted = painted[painted > 0]
    sparse = np.where(np.isin(labels, painted), labels, 0)
    region = np.zeros(labels.shape, bool)
    region[:, :cut] = True
    region |= sparse > 0            # painted nuclei are complete where they cross the edge
    return sparse, region


def main(argv=None) -> int:
    import bbbc007

    from napari_shiftseg.inference.evaluate import format_scores, model_method, score_methods
    from napari_shiftseg.training.train import network_config, train
    from napari_shiftseg.training.train_options import TRAINING_DEFAULTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0, help="training seed (run several for the spread)")
    p.add_argument("--save", default=None, metavar="DIR", help="also save each run's model here")
    p.add_argument("--runs", nargs="+", default=["complete", "sparse", "naive"],
                   choices=("complete", "sparse", "naive"))
    args = p.parse_args(argv)
    pairs = [(image, labels) for _, image, labels in bbbc007.load("train")]
    test = bbbc007.load("test")
    sparse = [sparse_pair(labels) for _, labels in pairs]
    n_all = sum(len(np.unique(lab)) - 1 for _, lab in pairs)
    n_painted = sum(len(np.unique(s)) - 1 for s, _ in sparse)
    print(f"{len(pairs)} training images: {n_all} nuclei, {n_painted} painted in the sparse runs "
          f"({n_painted / n_all:.0%})", flush=True)
    options = {**TRAINING_DEFAULTS, "steps": args.steps, "config": network_config(2),
               "seed": args.seed}
    methods = {}
    for run in args.runs:
        start = time.perf_counter()
        if run == "complete":
            model, _ = train(pairs, None, **options)
        elif run == "sparse":
            model, _ = train([(i, s) for (i, _), (s, _) in zip(pairs, sparse)], None,
                             annotated=[r for _, r in sparse], **options)
        else:
            model, _ = train([(i, s) for (i, _), (s, _) in zip(pairs, sparse)], None, **options)
        seconds = time.perf_counter() - start
        if args.save:
            from napari_shiftseg.network.modelio import save_model

            save_model(model, Path(args.save) / f"{run}_seed{args.seed}.safetensors")
        print(f"{run}: {seconds:.0f} s, validation {model.meta.get('validation')}", flush=True)
        methods[f"{run} ({seconds / 60:.1f} min)"] = model_method(model)
    rows, summary = score_methods(test, methods)
    print(format_scores(rows, summary, title="BBBC007 test split (3 images)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
