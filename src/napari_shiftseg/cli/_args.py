"""Argument types shared by several subcommands."""

from __future__ import annotations

import argparse


def shape(text: str) -> tuple[int, ...]:
    """'64,256,256' or '64x256x256' -> (64, 256, 256)."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,256 or 64x128x128, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return values


def voxel_size(text: str) -> tuple[float, ...]:
    """'2,0.5,0.5' or '2x0.5x0.5' -> (2.0, 0.5, 0.5): positive, finite."""
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 2,0.5,0.5, got {text!r}") from None
    if not values or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"voxel sizes must be positive numbers, got {text!r}")
    return values


def _positive(text: str, kind, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def positive_int(text: str) -> int:
    return _positive(text, int, "a whole number")


def positive_float(text: str) -> float:
    return _positive(text, float, "a number")


def add_quick_full(parser, quick: str, full: str) -> None:
    """``--quick`` (the default) / ``--full`` for the paper reproductions."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help=quick)
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help=full)
    parser.set_defaults(mode="quick")


#: Seconds between progress lines when stderr is a log file rather than a terminal.
LOG_INTERVAL = 30.0


def diameter(text: str):
    """'auto', 'none' (segment as imaged) or a positive number of pixels."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a size in pixels, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the object diameter must be a positive number of pixels, got {text}")
    return value


DIAMETER_HELP = ("object diameter in the image, in pixels: the image is resampled to the size the "
                 "model learnt (models that record one, such as the bundled nuclei model); "
                 "'auto' (default) estimates it, 'none' segments as imaged")


def add_channel(parser) -> None:
    parser.add_argument("--channel", type=int, default=None, metavar="K",
                        help="for RGB or multi-channel files: the channel to segment (0-based)")
    parser.add_argument("--channels", type=channel_list, default=None, metavar="K,K,...",
                        help="for a multi-channel model: the file's channels it takes, in its "
                             "order (e.g. 0,2: nuclei and membranes)")


def channel_list(text: str) -> tuple[int, ...]:
    """'0,2' -> (0, 2): two or more distinct channel indices."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected channel numbers like 0,2, got {text!r}") from None
    if len(values) < 2 or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--channels takes two or more distinct channels (0-based), "
                                         f"got {text!r}; for one channel use --channel")
    return values


def picked_channels(args):
    """``--channel K`` or ``--channels K,K`` (a list), refusing both at once."""
    if getattr(args, "channels", None) is not None:
        if args.channel is not None:
            from ..util._errors import ShiftSegError

            raise ShiftSegError("give --channel (one) or --channels (several), not both")
        return list(args.channels)
    return args.channel


def progress_bar(**kwargs):
    """A tqdm bar on stderr. In a terminal it redraws in place; into a log file (a batch job,
    ``2> log``) every redraw would be another line, so there it updates at most every 30 s."""
    import sys

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(file=sys.stderr, dynamic_ncols=tty, mininterval=0.1 if tty else LOG_INTERVAL,
                **kwargs)
