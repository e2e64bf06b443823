"""``shiftseg capacity``: how many same-looking disks a U-Net tells apart (paper Fig. 2).

Trains small U-Nets on periodic disk lattices (spacing 16 = 2·f^l and 15, co-prime with f^l = 8)
and counts the distinct embeddings of the disks' central pixels; prints a table and writes
``DIR/capacity.csv``, ``capacity.json`` and ``capacity.png`` (input, embeddings as RGB, clusters).
"""

from __future__ import annotations

from . import _args

#: (steps, learning rate, base channels) per mode. Quick: ~1.5 min per case on one CPU core.
SETTINGS = {"quick": (1000, 1e-3, 8), "full": (3000, 5e-4, 16)}


def add_parser(sub):
    p = sub.add_parser(
        "capacity", help="count how many same-looking disks a U-Net can tell apart (paper Fig. 2)",
        description="Train U-Nets on periodic disk lattices and count distinct embeddings of the "
                    "disks' central pixels: spacing 16 (a multiple of f^l) gives 1, spacing 15 up "
                    "to f^(d*l) (64 for 2D, l=3).",
    )
    _args.add_quick_full(p, quick="1000 steps, 8 base channels (default; a few minutes per case on 2 cores)",
                         full="3000 steps, 16 base channels, nearest upsampling for every setting")
    p.add_argument("-m", "--model", default=None,
                   help="evaluate this model file instead of training (its geometry decides f^l)")
    p.add_argument("--spacings", default=None,
                   help="comma-separated lattice spacings to test (default: the mode's cases)")
    p.add_argument("--levels", default=None, help="comma-separated pooling levels (default 3,2)")
    p.add_argument("--steps", type=_args.positive_int, default=None, help="training steps per case")
    p.add_argument("--lr", type=_args.positive_float, default=None, help="Adam learning rate")
    p.add_argument("--base-channels", type=_args.positive_int, default=None,
                   help="channels of the first level")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default="shiftseg-capacity", metavar="DIR",
                   help="output directory (default ./shiftseg-capacity)")
    p.set_defaults(run=run)


def _ints(text, name):
    from ..util._errors import ShiftSegError

    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ShiftSegError(f"{name} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ShiftSegError(f"{name} must be positive, got {text!r}")
    return values


def cases_for(args):
    """The cases to run from the mode and the --spacings/--levels filters."""
    from ..reproduce.capacity import FULL_CASES, QUICK_CASES, CapacityCase

    cases = list(QUICK_CASES if args.mode == "quick" else FULL_CASES)
    if args.levels:
        levels = _ints(args.levels, "--levels")
        cases = [c for c in cases if c.levels in levels] or [
            CapacityCase(s, lv, u) for lv in levels for s in (16, 15) for u in ("learnt",)]
    if args.spacings:
        spacings = _ints(args.spacings, "--spacings")
        keys = list(dict.fromkeys((c.levels, c.upsampling) for c in cases))
        cases = [CapacityCase(s, lv, u) for lv, u in keys for s in spacings]
    return cases


def run(args) -> int:
    import csv
    import json
    import sys
    from pathlib import Path

    import torch

    from ..network.modelio import load_model
    from ..reproduce import capacity, figures

    steps, lr, base = SETTINGS[args.mode]
    steps = args.steps or steps
    lr = args.lr or lr
    base = args.base_channels or base
    model = load_model(args.model) if args.model else None
    cases = cases_for(args)
    if model is not None:
        # One row per spacing: the model's geometry replaces the cases'.
        spacings = list(dict.fromkeys(c.spacing for c in cases))
        cases = [capacity.CapacityCase(s) for s in spacings]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print(f"capacity ({args.mode} mode: {steps} steps, lr {lr:g}, {base} base channels, "
          f"{torch.get_num_threads()} torch thread(s)) -> {out}", file=sys.stderr)
    results = capacity.run_capacity(
        cases, steps=steps, lr=lr, base_channels=base, seed=args.seed, model=model,
        progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    print(capacity.format_table(results))
    rows = [r.row() for r in results]
    with (out / "capacity.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = {"mode": args.mode, "steps": steps, "lr": lr, "base_channels": base,
                "seed": args.seed, "model": str(args.model) if args.model else None}
    (out / "capacity.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    fig = figures.capacity_figure(results, out / "capacity.png")
    print(f"wrote {out / 'capacity.csv'}, {out / 'capacity.json'}, {fig}")
    return 0
