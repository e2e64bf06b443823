"""``shiftseg window-study``: training output window < / = / > f^l, and same padding (paper Fig. 3).

Trains the same U-Net with each training output window (and a same-padded twin), segments a
held-out image by exact tile-and-stitch and reports the embedding jump across f^l grid lines
relative to inside the cells, across tile borders, and the false splits. Writes
``DIR/window_study.csv``, ``window_study.json`` and ``window_study.png``.
"""

from __future__ import annotations

from . import _args


def add_parser(sub):
    p = sub.add_parser(
        "window-study", help="seams from training windows <= f^l and from same padding (paper Fig. 3)",
        description="Train the same U-Net with output windows smaller than, equal to and larger "
                    "than f^l (and a same-padded twin), then measure seams and false splits "
                    "under exact tile-and-stitch.",
    )
    _args.add_quick_full(p, quick="2000 steps, 8 base channels (default; about 10 minutes on 2 cores)",
                         full="6000 steps, 16 base channels")
    p.add_argument("--levels", type=_args.positive_int, default=3, help="pooling levels (default 3)")
    p.add_argument("--steps", type=_args.positive_int, default=None, help="training steps per case")
    p.add_argument("--tile", type=_args.positive_int, default=None,
                   help="output tile for the stitched evaluation (default 8*f^l)")
    p.add_argument("--reference", action="append", default=None, metavar="MODEL",
                   help="also evaluate this trained 2D model (repeatable; default: the bundled "
                        "2D model, trained long with a window far above f^l)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default="shiftseg-window-study", metavar="DIR",
                   help="output directory (default ./shiftseg-window-study)")
    p.set_defaults(run=run)


def run(args) -> int:
    import csv
    import json
    import sys
    from pathlib import Path

    from ..network.modelio import bundled_model_path, load_model
    from ..reproduce import figures
    from ..reproduce.window_study import StudySettings, format_table, run_window_study
    from ..util._errors import ShiftSegError

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    references = []
    paths = args.reference if args.reference is not None else [bundled_model_path(2, "disks")]
    for path in paths:
        try:
            model = load_model(path)
        except ShiftSegError as err:
            if args.reference is not None:
                raise
            print(f"  (no reference model: {err})", file=sys.stderr)
            continue
        references.append((f"{Path(path).name} (window {model.meta.get('training_window', ['?'])[0]})",
                           model))
    print(f"window study ({args.mode} mode, l = {args.levels}) -> {out}", file=sys.stderr)
    settings = StudySettings(mode=args.mode, levels=args.levels, steps=args.steps, tile=args.tile,
                             seed=args.seed)
    study = run_window_study(settings, save_dir=out / "models", references=references,
                             progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    print(format_table(study))
    rows = [{k: v for k, v in c.items() if k not in ("arrays", "phase_profile", "model_file")}
            for c in study["cases"]]
    with (out / "window_study.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cases = [{k: v for k, v in c.items() if k != "arrays"} for c in study["cases"]]
    (out / "window_study.json").write_text(
        json.dumps({"settings": study["settings"], "cases": cases}, indent=2))
    png = figures.window_figure(study, out / "window_study.png")
    print(f"wrote {out / 'window_study.csv'}, {out / 'window_study.json'}, {png}")
    return 0
