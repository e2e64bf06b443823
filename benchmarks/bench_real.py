"""Benchmark: the learned model against Otsu + watershed on real and realistic nuclei.

Three sets, one table each (AP@0.5, mAP over IoU 0.5:0.05:0.9, recall@0.5, false splits and
merges, object counts, seconds; per image and overall):

* ``bbbc007`` - the BBBC007 *test* split (3 images; fetch once with
  ``python scripts/bbbc007.py``). Its labels come from a threshold + watershed pipeline, so this
  measures agreement, not superiority.
* ``synth2d`` - 8 realistic synthetic nuclei images 256 x 256 (:func:`napari_shiftseg.synthetic.synth.nuclei`)
  with seeds ``TEST_SEEDS[0:8]`` (900000+i).
* ``synth3d`` - 3 synthetic volumes 64 x 128 x 128 with seeds ``TEST_SEEDS[0:3]``.

The synthetic seeds come from :data:`napari_shiftseg.synthetic.synth.TEST_SEEDS` (900000-999999): they are
held out. Training, validation and tuning must use other seeds.

Two **development** sets, for choosing checkpoints and settings (never the test sets above):

* ``dev2d`` - the BBBC007 *val* split (2) and 9 synthetic 256² images, seeds 3·10⁹ + 0…5 as
  generated and 3·10⁹ + 10…12 with small nuclei only (radius 4–6 px, the crowded case);
* ``dev3d`` - 6 synthetic volumes 64 × 128 × 128 (seeds 3·10⁹ + 0…5) and 3 with small nuclei
  only (3·10⁹ + 10…12).

The small-nucleus images are there because the plain dev seeds turned out less crowded than the
test seeds: a bandwidth chosen on them merged crowded test nuclei (RESULTS.md section 7).

Run: ``python benchmarks/bench_real.py [--model-2d M] [--model-3d M] [--sets bbbc007 synth2d]
[--no-baseline] [--json OUT]`` (default models: the bundled ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_shiftseg.imaging.classical import otsu_watershed
from napari_shiftseg.inference.evaluate import format_scores, model_method, score_methods
from napari_shiftseg.network.modelio import load_bundled, load_model
from napari_shiftseg.synthetic import synth

ROOT = Path(__file__).resolve().parents[1]
SETS = ("bbbc007", "synth2d", "synth3d", "dev2d", "dev3d")
TEST_SETS = SETS[:3]
DEV_SEED = 3_000_000_000
SYNTH_2D = {"n": 8, "shape": (256, 256)}
SYNTH_3D = {"n": 3, "shape": (64, 128, 128)}


def bbbc007_test(root: Path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bbbc007

    try:
        return bbbc007.load("test", root)
    except FileNotFoundError as err:
        raise SystemExit(f"bench_real: {err}") from None


def synthetic(n: int, shape) -> list:
    seeds = synth.TEST_SEEDS[:n]
    return [(f"seed {s}", *synth.nuclei(shape, seed=s)) for s in seeds]


def development(shape) -> list:
    """The dev set's synthetic images (module docstring): plain seeds, then small nuclei only."""
    plain = [(f"dev {DEV_SEED + i}", *synth.nuclei(shape, seed=DEV_SEED + i)) for i in range(6)]
    small = [(f"dev {DEV_SEED + i} small", *synth.nuclei(shape, seed=DEV_SEED + i, radius=(4, 6)))
             for i in range(10, 13)]
    return plain + small


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-2d", default=None, help="2D model file (default: bundled)")
    parser.add_argument("--model-3d", default=None, help="3D model file (default: bundled)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(TEST_SETS),
                        help="default: the three test sets; dev2d/dev3d for tuning")
    parser.add_argument("--no-baseline", action="store_true", help="skip Otsu + watershed")
    parser.add_argument("--bbbc007-root", default=str(ROOT / "data" / "bbbc007"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write all scores as JSON")
    args = parser.parse_args(argv)

    def model(ndim):
        path = args.model_2d if ndim == 2 else args.model_3d
        m = load_bundled(ndim, args.device) if path is None else load_model(path, args.device)
        return (Path(path).name if path else f"bundled {ndim}D"), m

    results = {}
    for name in args.sets:
        start = time.perf_counter()
        if name == "bbbc007":
            pairs, ndim = bbbc007_test(Path(args.bbbc007_root)), 2
        elif name == "synth2d":
            pairs, ndim = synthetic(SYNTH_2D["n"], SYNTH_2D["shape"]), 2
        elif name == "dev2d":
            sys.path.insert(0, str(ROOT / "scripts"))
            import bbbc007

            val = [(f"BBBC007 val {n}", image, labels)
                   for n, image, labels in bbbc007.load("val", Path(args.bbbc007_root))]
            pairs, ndim = val + development(SYNTH_2D["shape"]), 2
        elif name == "dev3d":
            pairs, ndim = development(SYNTH_3D["shape"]), 3
        else:
            pairs, ndim = synthetic(SYNTH_3D["n"], SYNTH_3D["shape"]), 3
        label, m = model(ndim)
        methods = {label: model_method(m, device=args.device)}
        if not args.no_baseline:
            methods["otsu+watershed"] = otsu_watershed
        rows, summary = score_methods(pairs, methods)
        print(format_scores(rows, summary, title=f"{name} ({len(pairs)} images)"))
        print(f"({time.perf_counter() - start:.1f} s)\n", flush=True)
        results[name] = {"rows": rows, "summary": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
