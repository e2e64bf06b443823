"""Benchmark: an anisotropic network on an anisotropic stack against an isotropic network on
the same stack resampled to cubic voxels (issue 10).

Data: realistic synthetic nuclei volumes (:func:`napari_shiftseg.synthetic.synth.nuclei`) imaged with a
z step 3x the pixel: every three planes of an isotropic volume are averaged into one (a thick
optical section) and the labels are those of the middle plane. Training and validation use
seeds outside ``synth.TEST_SEEDS``; the test stacks use ``synth.TEST_SEEDS[:3]``.

- **anisotropic**: pooling factors chosen from the voxel size (3, 1, 1) by
  :func:`~napari_shiftseg.training.train.suggest_factors` (no z pooling at the first level) and a
  position scale per axis in physical units (:func:`~napari_shiftseg.training.train.physical_position_scale`),
  trained and run on the stacks as they are;
- **isotropic**: the same network with equal factors, trained and run on the stacks resampled
  to cubic voxels (linear in z, labels nearest), its labels read back onto the stack's grid.

Both train with the same steps, batch and field of view; the table gives AP@0.5 on the test
stacks and the inference seconds (network + clustering), best of ``--repeats`` interleaved runs.

Run: ``python benchmarks/bench_anisotropic.py [--steps 1000] [--aniso-steps 1750] [--threads 2]``
(about 15 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from napari_shiftseg.imaging import metrics, rescale
from napari_shiftseg.inference.evaluate import segment_array
from napari_shiftseg.synthetic import synth
from napari_shiftseg.training.train import (
    network_config,
    physical_position_scale,
    suggest_factors,
    train,
)

Z_STEP = 3
SHAPE = (16, 96, 96)  # the stack; the isotropic volume it is made from is 48 x 96 x 96


def stack(seed: int):
    """(anisotropic image, labels): a 3x thicker z step than the pixel."""
    z, y, x = SHAPE
    image, labels = synth.nuclei((z * Z_STEP, y, x), seed=seed)
    image = image.reshape(z, Z_STEP, y, x).mean(axis=1)
    return image.astype(np.float32), labels[Z_STEP // 2::Z_STEP].astype(np.int32)


def to_isotropic(pair):
    image, labels = pair
    shape = (image.shape[0] * Z_STEP,) + image.shape[1:]
    return rescale.resize_image(image, shape=shape), np.asarray(rescale.resize_labels(labels, shape))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps of the isotropic model")
    p.add_argument("--aniso-steps", type=int, default=None,
                   help="training steps of the anisotropic model (default: --steps); its steps "
                        "are cheaper, so equal training time means more of them")
    p.add_argument("--pool", type=int, default=12, help="training stacks")
    p.add_argument("--seed", type=int, default=0, help="training seed (crops, augmentation, init)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    pool = [stack(s) for s in range(10_000, 10_000 + args.pool)]
    val = [stack(s) for s in (20_000, 20_001)]
    test = [stack(s) for s in synth.TEST_SEEDS[:3]]
    factors = suggest_factors((Z_STEP, 1, 1), levels=2)
    # Embedding distances in physical units: the z step gets 3x the position scale.
    scale = physical_position_scale((Z_STEP, 1, 1), 0.25)
    runs = {
        "anisotropic": dict(factors=factors, position_scale=scale, window=(12, 36, 36), pool=pool, val=val,
                            test=test),
        "isotropic (resampled)": dict(factors=None, position_scale=0.25, window=(36, 36, 36),
                                      pool=[to_isotropic(q) for q in pool],
                                      val=[to_isotropic(q) for q in val], test=test),
    }
    models = {}
    for name, run in runs.items():
        config = network_config(3, levels=2, base_channels=8, factors=run["factors"],
                                position_scale=run["position_scale"])
        start = time.perf_counter()
        steps = (args.aniso_steps or args.steps) if name == "anisotropic" else args.steps
        model, _ = train(run["pool"], None, config, steps=steps, lr=1e-3, lr_schedule="cosine",
                         output_window=run["window"], batch_size=2, seed=args.seed, validation_pairs=run["val"],
                         validate_every=max(50, steps // 6), threads=args.threads)
        models[name] = (model, time.perf_counter() - start)
        print(f"{name}: factors {model.geometry.factors or 'equal'}, {steps} steps, trained in "
              f"{models[name][1]:.0f} s", flush=True)

    def segment(name, image):
        model = models[name][0]
        if name == "anisotropic":
            return segment_array(image, model, diameter=None)
        iso = rescale.resize_image(image, shape=(image.shape[0] * Z_STEP,) + image.shape[1:])
        return np.asarray(rescale.resize_labels(segment_array(iso, model, diameter=None), image.shape))

    scores = {name: [] for name in runs}
    seconds = {name: [np.inf] * len(test) for name in runs}
    for repeat in range(args.repeats):
        for i, (image, labels) in enumerate(test):
            for name in runs:  # interleaved: both methods see the same machine load
                start = time.perf_counter()
                pred = segment(name, image)
                seconds[name][i] = min(seconds[name][i], time.perf_counter() - start)
                if repeat == 0:
                    scores[name].append(metrics.evaluate(labels, pred)["ap@0.5"])
    best = f"seconds (best of {args.repeats})"
    print(f"\n{'model':<24} {'AP@0.5 per stack':<22} {'mean':>6} {best:>22} {'train s':>8}")
    for name in runs:
        per = " ".join(f"{v:.3f}" for v in scores[name])
        print(f"{name:<24} {per:<22} {np.mean(scores[name]):>6.3f} {sum(seconds[name]):>22.2f} {models[name][1]:>8.0f}")
    ratio = sum(seconds["isotropic (resampled)"]) / sum(seconds["anisotropic"])
    print(f"\ninference time isotropic / anisotropic: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
