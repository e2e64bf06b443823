"""Tune a model's segmentation settings on a larger validation set (no retraining).

Training validates on few images to stay fast; the bundled models' stored settings were then
re-tuned here on more validation images (never the benchmark's test images or TEST_SEEDS):
2D: the BBBC007 *val* split + 8 synthetic nuclei images; 3D: 4 synthetic volumes.

    python scripts/retune_bundled.py src/napari_shiftseg/models/default_2d.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

#: Validation seeds (outside synth.TEST_SEEDS and what training draws for the bundled models).
SEEDS = range(2_000_000_100, 2_000_000_108)


def main(argv=None) -> int:
    from napari_shiftseg.network.modelio import load_model, save_model
    from napari_shiftseg.network.settings import SegmentationSettings
    from napari_shiftseg.synthetic import synth
    from napari_shiftseg.training.tuning import tune_settings, validation_embeddings

    path = Path((argv or sys.argv[1:])[0])
    model = load_model(path)
    ndim = model.geometry.ndim
    if ndim == 2:
        import bbbc007

        pairs = [(i, l) for _, i, l in bbbc007.load("val")]
        pairs += [synth.nuclei((256, 256), seed=s) for s in SEEDS]
    else:
        pairs = [synth.nuclei((48, 112, 112), seed=s) for s in SEEDS[:4]]
    embeddings = validation_embeddings(model, pairs)
    delta_d = float(model.meta.get("loss", {}).get("delta_d", 3.0))
    start = SegmentationSettings.of(model)
    settings, result, trials = tune_settings(embeddings, pairs, start, model.config.foreground_head, delta_d)
    print(f"{path.name}: {start} -> {settings}: {result} ({len(trials)} trials on {len(pairs)} images)")
    model.meta.update(settings.to_meta())
    model.meta["validation"]["retuned"] = {"images": len(pairs), **{k: round(v, 4) for k, v in result.items()}}
    save_model(model, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
