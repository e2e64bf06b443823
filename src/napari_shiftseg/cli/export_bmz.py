"""``shiftseg export-bmz MODEL -o DIR``: write a model as a bioimage.io package (napari_shiftseg.network.bmz)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("export-bmz", help="write a model as a bioimage.io package (for deepImageJ, "
                                          "ilastik, bioimageio.core); needs bioimageio.core")
    p.add_argument("model", help="model file (.safetensors), or bundled:2 / bundled:3")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="new (or empty) folder")
    p.add_argument("--name", default=None, help="package name (default: from the model file)")
    p.add_argument("--zip", action="store_true", help="also write DIR.zip (what bioimage.io uploads)")
    p.set_defaults(run=run)


def run(args) -> int:
    import shutil
    from pathlib import Path

    from ..network.bmz import export_package
    from ..network.modelio import load_named
    from ..util._errors import ShiftSegError

    zip_path = Path(str(Path(args.output)) + ".zip")
    if args.zip and (zip_path.exists() or zip_path.is_symlink()):  # checked before anything is written
        raise ShiftSegError(f"{zip_path} exists; remove it or choose another -o (export-bmz never "
                            "replaces a file it did not create)")
    rdf = export_package(load_named(args.model), args.output, name=args.name)
    print(f"wrote {rdf}")
    if args.zip:
        archive = shutil.make_archive(str(Path(args.output)), "zip", root_dir=args.output)
        print(f"wrote {archive}")
    return 0
