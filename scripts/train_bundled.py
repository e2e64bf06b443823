"""Train the bundled default nuclei models (a dev script; the recipe is in docs/MODELS.md).

2D: BBBC007 *train* images (9, fetched by ``python scripts/bbbc007.py``) mixed half and half
with realistic synthetic nuclei (:func:`napari_shiftseg.synthetic.synth.nuclei`, seeds outside
``synth.TEST_SEEDS``); validation on the BBBC007 *val* images plus two synthetic images with
seeds from ``VALIDATION_SEEDS``. The BBBC007 *test* images and the synthetic test seeds are
never seen here.

3D: synthetic nuclei volumes only (there are no 3D labels in BBBC007).

    python scripts/train_bundled.py 2d --steps 3000 -o src/napari_shiftseg/models/default_2d.safetensors
    python scripts/train_bundled.py 3d --steps 800 -o src/napari_shiftseg/models/default_3d.safetensors

Runs on the CPU (about 0.3 s per 2D step on 2 cores) or ``--device cuda``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

#: Seeds of the synthetic validation images (outside synth.TEST_SEEDS and the training range).
VALIDATION_SEEDS = range(2_000_000_000, 2_000_000_004)
SHAPES = {2: (256, 256), 3: (48, 112, 112)}


def _config(ndim: int, args):
    from napari_shiftseg.network.geometry import UNetGeometry
    from napari_shiftseg.network.unet import UNetConfig

    geometry = UNetGeometry(ndim=ndim, levels=args.levels)
    return UNetConfig(geometry=geometry, base_channels=args.base_channels, embed_dim=args.embed_dim or ndim,
                      embedding="spatial", position_scale=args.position_scale)


def _to_scale(pair, diameter: float):
    """(image, labels) resampled so that the median object diameter is ``diameter`` (within
    rescale.LIMITS, as at inference)."""
    from napari_shiftseg.imaging import rescale
    from napari_shiftseg.imaging.metrics import median_diameter

    image, labels = pair
    measured = median_diameter([labels])
    if not measured:
        return pair
    factor = float(np.clip(diameter / measured, *rescale.LIMITS))
    image = rescale.resize_image(np.asarray(image, np.float32), factor)
    return image, np.asarray(rescale.resize_labels(labels, image.shape))


#: Seeds of realistic training stacks (counting up) and their validation stacks (counting down).
REALISTIC_SEEDS = 10_000


def _realistic(seed: int, diameter: float, small: bool = False):
    """A realistic stack (random size, z step, crowding), on cubic voxels with ``diameter`` px
    nuclei: what rescale.plan_resampling hands the 3D model. ``small``: crowded 7-12 px nuclei
    at a 1-2x z step, where the z PSF is as wide as a nucleus (the hardest held-out case)."""
    from napari_shiftseg.imaging import rescale
    from napari_shiftseg.synthetic import synth_stacks

    rng = np.random.default_rng(seed)
    d = float(np.exp(rng.uniform(np.log(7 if small else 8), np.log(12 if small else 60))))
    aniso = float(rng.uniform(1.0, 2.0 if small else 5.0))
    crowded = small or bool(rng.random() < 0.5)
    stack = synth_stacks.microscope_stack(d, aniso, seed, extent=(4.0, 7.0, 7.0), crowded=crowded,
                                          haze=float(rng.uniform(0.0, 0.5)), axial_blur=float(rng.uniform(2, 4)),
                                          photons=float(np.exp(rng.uniform(np.log(40), np.log(300)))))
    jitter = float(np.exp(rng.uniform(-0.15, 0.15)))
    factor = diameter * jitter / stack.diameter
    shape = rescale.working_shape(stack.image.shape, (aniso * factor, factor, factor))
    image = np.asarray(rescale.resize_image(stack.image, shape=shape), np.float32)
    return image, np.asarray(rescale.resize_labels(stack.labels, shape), np.int32)


def main(argv=None) -> int:

    from napari_shiftseg.network.modelio import load_model, save_model
    from napari_shiftseg.synthetic import synth
    from napari_shiftseg.training.train import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ndim", choices=("2d", "3d"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--position-scale", type=float, default=0.25)
    p.add_argument("--embed-dim", type=int, default=None, help="default: one per axis (no free channels)")
    p.add_argument("--delta-d", type=float, default=3.0)
    p.add_argument("--delta-v", type=float, default=0.5)
    p.add_argument("--push-per-instance", action="store_true")
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--real-fraction", type=float, default=0.5, help="2D: share of BBBC007 crops")
    p.add_argument("--init", default=None, help="continue from this model file")
    p.add_argument("--pool", type=int, default=48, help="3D: synthetic training volumes (seeds 0..N-1)")
    p.add_argument("--small-fraction", type=float, default=0.0,
                   help="3D: share of pool volumes generated with small nuclei only (radius 4-6 px), "
                        "the hardest case once resampled (crowded, blurred)")
    p.add_argument("--realistic-fraction", type=float, default=0.0,
                   help="3D: share of pool volumes that are realistic microscope stacks "
                        "(synth_stacks.microscope_stack: nuclei 8-60 px, z step 1-5x, axial blur, "
                        "haze), resampled to cubic voxels and --object-diameter as inference does")
    p.add_argument("--realistic-small-fraction", type=float, default=0.0,
                   help="3D: share of the realistic stacks drawn small (7-12 px) and crowded")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object-diameter", type=float, default=None,
                   help="resample every training and validation image so that its median "
                        "object diameter is this (jittered by +-15 %% in training), as inference "
                        "does with diameter='auto'; recorded in the model")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    ndim = int(args.ndim[0])
    shape = SHAPES[ndim]
    if ndim == 3 and args.object_diameter:
        # Down-scaling by up to rescale.LIMITS[0] = 0.5 must leave a whole training window in z.
        shape = (72,) + shape[1:]
    real = []
    if ndim == 2:
        import bbbc007

        real = [(image, labels) for _, image, labels in bbbc007.load("train")]
        val = [(image, labels) for _, image, labels in bbbc007.load("val")]
    else:
        val = []
    val += [synth.nuclei(shape, seed=s) for s in VALIDATION_SEEDS]
    if args.object_diameter:
        val = [_to_scale(pair, args.object_diameter) for pair in val]

    if ndim == 3:
        # A fixed pool of volumes, each normalised and padded once by train(): generating a
        # 3D volume per crop would cost more than the training step itself.
        n_small = round(args.small_fraction * args.pool)
        pool = [synth.nuclei(shape, seed=s, **({"radius": (4, 6)} if s < n_small else {}))
                for s in range(args.pool)]
        if args.object_diameter:
            # One jittered scale per pool volume (the pool is fixed; see the 2D source below).
            jitter = np.exp(np.random.default_rng(args.seed).uniform(-0.15, 0.15, len(pool)))
            pool = [_to_scale(pair, args.object_diameter * j) for pair, j in zip(pool, jitter)]
        n_real = round(args.realistic_fraction * args.pool)
        if n_real:
            # The last n_real pool volumes become realistic stacks, seen as inference sees them.
            n_small = round(args.realistic_small_fraction * n_real)
            pool[len(pool) - n_real:] = [_realistic(REALISTIC_SEEDS + i, args.object_diameter or 14.0,
                                                    small=i < n_small)
                                         for i in range(n_real)]
            val += [_realistic(REALISTIC_SEEDS - 1 - i, args.object_diameter or 14.0) for i in range(2)]
            if args.realistic_small_fraction:
                val.append(_realistic(REALISTIC_SEEDS - 3, args.object_diameter or 14.0, small=True))
        source_or_pairs = pool
    else:
        source_or_pairs = None

    def source(seed: int):
        # train() never hands out synth.TEST_SEEDS; the validation seeds are far above its draws
        # only by chance, so skip them explicitly.
        rng = np.random.default_rng(seed)
        if real and rng.random() < args.real_fraction:
            pair = real[int(rng.integers(len(real)))]
        else:
            if seed in VALIDATION_SEEDS:
                seed += len(VALIDATION_SEEDS)
            pair = synth.nuclei(shape, seed=seed)
        if not args.object_diameter:
            return pair
        # Jitter covers the band inference leaves as imaged (rescale.TOLERANCE).
        return _to_scale(pair, args.object_diameter * float(np.exp(rng.uniform(-0.15, 0.15))))

    config = load_model(args.init) if args.init else _config(ndim, args)
    window = args.window or (92 if ndim == 2 else 28)
    t0 = time.perf_counter()
    last = [t0]

    def progress(step, parts):
        if step % 50 == 0:
            now = time.perf_counter()
            print(f"step {step} loss {parts['loss']:.3f} ({(now - last[0]) / 50:.2f} s/step)", flush=True)
            last[0] = now

    model, history = train(
        source_or_pairs or source, None, config, steps=args.steps, lr=args.lr, lr_schedule="cosine",
        output_window=window, batch_size=args.batch_size, seed=args.seed, validation_pairs=val,
        validate_every=max(50, args.steps // 12), device=args.device, threads=args.threads,
        delta_d=args.delta_d, delta_v=args.delta_v, push_per_instance=args.push_per_instance,
        progress=progress, command="scripts/train_bundled.py " + " ".join(argv or sys.argv[1:]),
    )
    for v in history["validation"]:
        print("validation", v, flush=True)
    if args.object_diameter:
        model.meta["object_diameter"] = args.object_diameter
    model.meta["purpose"] = (f"general {ndim}D fluorescence nuclei (BBBC007 train + synthetic nuclei)"
                             if ndim == 2 else "general 3D fluorescence nuclei (synthetic nuclei)")
    model.net.cpu()
    save_model(model, args.output)
    print(f"{time.perf_counter() - t0:.0f} s; validation {model.meta['validation']}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
