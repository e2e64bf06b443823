"""The ``shiftseg`` command line.

Each subcommand lives in its own module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``; modules are discovered, and heavy imports (torch, dask) happen inside
``run`` so that ``shiftseg --help`` is instant. User errors (:class:`ShiftSegError`) are printed
as one line, without a traceback, and give exit status 2. :func:`main` is the one error boundary:
failures of the environment (permission denied, no space left, not enough memory, an input file
that cannot be decoded; see :func:`~napari_shiftseg.util._errors.failure_message`) are printed as one
line too and give exit status 3. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..util._errors import EXIT_SYSTEM_ERROR, EXIT_USER_ERROR, ShiftSegError, failure_message


def _commands():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line like every other error (argparse
    prints the whole usage block first, which buries the line that says what is wrong)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} "
                                   "--help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shiftseg",
        description="Exact tile-and-stitch instance segmentation with shift-equivariant U-Nets.",
    )
    parser.add_argument("--version", action="version", version=f"napari-shiftseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _commands():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ShiftSegError as err:
        print(f"shiftseg {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"shiftseg {args.command}: interrupted; finished work is kept, run the same "
              "command again to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the error boundary: environment failures, one line
        message = failure_message(err)
        if message is None:
            raise
        print(f"shiftseg {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
