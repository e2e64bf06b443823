"""``shiftseg info [MODEL]``: geometry, context, f^l, capacity and valid tile sizes of a model."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("info", help="show a model's geometry, context, f^l, capacity and tile sizes")
    p.add_argument("model", nargs="?", help="model file (.safetensors); default: the bundled 2D model")
    p.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="bundled model to show without MODEL")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..network.modelio import bundled_model_path, read_metadata

    path = args.model or bundled_model_path(args.ndim)
    info = read_metadata(path)
    config, meta = info.config, info.meta
    g = config.geometry
    rows = {"model": str(path), **g.describe(),
            "upsampling": config.upsampling, "embedding channels": config.embed_dim,
            "foreground head": config.foreground_head, "base channels": config.base_channels}
    for key in ("training_window", "object_diameter", "normalization", "metrics", "command"):
        if key in meta:
            rows[key.replace("_", " ")] = meta[key]
    def shown(sizes):  # one number when every axis agrees
        return sizes[0] if len(set(sizes)) == 1 else "x".join(map(str, sizes))

    tiles = [tuple(n * a.grid for a in g.axes) for n in (4, 8, 16, 32)]
    rows["output tiles (input, cost)"] = ", ".join(
        f"{shown(t)} ({shown(g.tile_input_size(t))}, {g.amplification(t):.2f}x)" for t in tiles)
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    return 0
