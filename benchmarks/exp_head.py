"""Dev experiment: free vs spatial embedding head on BBBC007 train -> val (not a test).

    python benchmarks/exp_head.py --head spatial --steps 600
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bbbc007  # noqa: E402

from napari_shiftseg.network.geometry import UNetGeometry  # noqa: E402
from napari_shiftseg.network.unet import UNetConfig  # noqa: E402
from napari_shiftseg.training.train import train  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--head", default="spatial")
    p.add_argument("--scale", type=float, default=0.33)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("-o", default=None)
    a = p.parse_args()
    torch.set_num_threads(2)
    tr = [(i, l) for _, i, l in bbbc007.load("train")]
    va = [(i, l) for _, i, l in bbbc007.load("val")]
    cfg = UNetConfig(geometry=UNetGeometry(ndim=2, levels=3), base_channels=a.base,
                     embed_dim=3 if a.head == "free" else 2, embedding=a.head,
                     position_scale=a.scale if a.head == "spatial" else 0.0)
    t = time.time()
    model, hist = train(tr, None, cfg, steps=a.steps, lr=a.lr, lr_schedule="cosine", validation_pairs=va,
                        validate_every=a.every, output_window=a.window, batch_size=a.batch,
                        progress=lambda s, v: print(s, round(v["loss"], 3), flush=True) if s % 50 == 0 else None)
    print("seconds", round(time.time() - t), "window", model.meta["training_window"])
    for v in hist["validation"]:
        print("val", v)
    print("record", {k: v for k, v in model.meta["validation"].items()})
    keys = ("bandwidth", "fg_threshold", "min_size", "merge_distance", "absorb_small", "fill_holes")
    print("settings", {k: model.meta[k] for k in keys})
    if a.o:
        from napari_shiftseg.network.modelio import save_model
        save_model(model, a.o)


if __name__ == "__main__":
    main()
