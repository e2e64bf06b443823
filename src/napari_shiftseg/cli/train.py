"""``shiftseg train``: train an embedding model on labelled images or synthetic data.

Real data: ``--image IMG --labels LBL`` (repeat both for several images; TIFF, .npy or zarr).
Synthetic data: ``--synthetic lattice|random`` draws a fresh synthetic image for every crop
(object options as in ``shiftseg synth``; each image is the input crop plus the context large).

The model file is written atomically at the end and, with ``--checkpoint-every N``, every N
steps. Ctrl-C stops training after the current step and saves the model trained so far (its
metadata says ``complete: false``). ``--eval-images N`` (synthetic only) segments N held-out
synthetic images with seeds never used for training and records AP@0.5 in the model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..training.train_options import (
    BATCH_SIZE_3D,
    CONTINUE_DEFAULTS,
    DEFAULT_INIT,
    TRAINING_DEFAULTS,
    LossSettings,
    TrainOptions,
    training_defaults,
)
from ..training.train_setup import EVAL_SEED_BASE, VALIDATION_SEED_BASE, check_output
from ..util._errors import ShiftSegError
from . import _args
from .synth import add_object_options

#: Synthetic-object options (shared with ``shiftseg synth``), recorded only with --synthetic.
OBJECT_OPTIONS = {"spacing", "radius", "radius_jitter", "density", "n_objects", "noise", "elastic"}
#: Network options, ignored (and not recorded) when continuing from --init.
NETWORK_OPTIONS = {"levels", "factor", "factors", "voxel_size", "upsampling", "padding", "base_channels", "embed_dim",
                   "no_foreground_head", "embedding", "position_scale"}


def _factors_spec(text: str) -> str:
    """'auto' or rows like '1,2,2/2,2,2' (checked here, turned into factors in _config)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        _factor_rows(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or one row of factors per level, e.g. 1,2,2/2,2,2, got {text!r}") from None
    return text


def _factor_rows(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in row.split(",")) for row in text.split("/"))


def _anisotropic_options(args, ndim: int, options: dict) -> None:
    """--factors (and, for 'auto', a per-axis position scale) into the network ``options``."""
    from ..training.train import (
        NETWORK_DEFAULTS,
        network_defaults,
        physical_position_scale,
        suggest_factors,
    )

    spec = getattr(args, "factors", None)
    if spec is None:
        return
    if spec != "auto":
        options["factors"] = _factor_rows(spec)
        return
    voxel = _voxel_size(args, ndim)
    rows = suggest_factors(voxel, options["levels"] or network_defaults(ndim)["levels"],
                           options["factor"] or NETWORK_DEFAULTS["factor"])
    options["factors"] = rows
    note = ""
    if options["position_scale"] is None and (options["embedding"] or NETWORK_DEFAULTS["embedding"]) == "spatial":
        # Embedding distances in physical units: a coarse z step gets a larger position scale.
        options["position_scale"] = physical_position_scale(voxel, NETWORK_DEFAULTS["position_scale"])
        note = f", position scale {options['position_scale']}"
    print(f"shiftseg train: voxel size {tuple(voxel)} -> pooling factors "
          f"{rows if rows else 'the same on every axis'}{note}", file=sys.stderr)


def _voxel_size(args, ndim: int) -> tuple:
    from ..files.io import image_info

    voxel = args.voxel_size
    if voxel is None and getattr(args, "image", None):
        voxel = image_info(args.image[0]).get("voxel_size")
    if voxel is None:
        raise ShiftSegError("--factors auto needs the voxel size: give --voxel-size Z,Y,X (the first "
                            "--image file records none)")
    if len(voxel) != ndim:
        raise ShiftSegError(f"--voxel-size {voxel} has {len(voxel)} values but the data are {ndim}D")
    return tuple(voxel)


def _window(text: str) -> tuple[int, ...]:
    return _args.shape(text)


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train an embedding model (U-Net + discriminative loss)",
        description="Train a shift-equivariant U-Net embedding model. Use --image/--labels for "
                    "your own annotated images or --synthetic for generated disks/spheres.",
    )
    data = p.add_argument_group("training data")
    data.add_argument("--image", action="append", metavar="IMG", help="raw image (repeatable)")
    data.add_argument("--labels", action="append", metavar="LBL",
                      help="instance labels for the matching --image (repeatable)")
    data.add_argument("--mask", action="append", metavar="MASK",
                      help="sparse labels: where the matching --labels are complete (non-zero "
                           "pixels; repeatable, one per --image). Elsewhere nothing enters the loss")
    data.add_argument("--sparse", action="store_true",
                      help="sparse labels without a mask: only the painted objects and a margin "
                           "around them are trusted (unpainted objects are not taught as background)")
    data.add_argument("--synthetic", choices=("lattice", "random", "nuclei"),
                      help="train on fresh synthetic images instead of files")
    data.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                      help="synthetic: 2 or 3 (default: from --shape, else 2)")
    data.add_argument("--shape", type=_args.shape, default=None,
                      help="synthetic: size of each generated image (default: input crop + context)")
    add_object_options(data)
    net = p.add_argument_group(
        "network", "Annotated images continue the bundled nuclei model by default (measured: "
        "better than a new network on one annotated crop, in 2D and 3D, see "
        "benchmarks/RESULTS.md section 7); --init MODEL continues another model; --init none, "
        "or a network option such as --levels or --base-channels, trains a new network.")
    net.add_argument("--levels", type=_args.positive_int, default=None,
                     help="pooling levels l (default 3; 2 in 3D)")
    net.add_argument("--factor", type=int, default=None, help="pooling factor f (default 2)")
    net.add_argument("--factors", type=_factors_spec, default=None, metavar="SPEC",
                     help="anisotropic network: pooling factors per level and axis, e.g. "
                          "1,2,2/2,2,2/2,2,2 (z kept at full resolution at the first level), or "
                          "'auto' to choose them from the voxel size (--voxel-size, or the first "
                          "--image file's ImageJ/OME metadata). Tiles then sit on a per-axis grid")
    data.add_argument("--channels", type=_args.channel_list, default=None, metavar="K,K,...",
                      help="train a multi-channel network on these channels of each --image "
                           "(e.g. 0,2); segment later with the same --channels")
    net.add_argument("--voxel-size", type=_args.voxel_size, default=None, metavar="Z,Y,X",
                     help="voxel size of the training images, for --factors auto")
    net.add_argument("--upsampling", choices=("learnt", "nearest"), default=None,
                     help="learnt (transposed conv, default) or nearest")
    net.add_argument("--padding", choices=("valid", "same"), default=None,
                     help="valid (exact tiling, default) or same (for comparison only)")
    net.add_argument("--base-channels", type=_args.positive_int, default=None,
                     help="channels of the first level (default 16)")
    net.add_argument("--embedding", choices=("spatial", "free"), default=None,
                     help="spatial (position + predicted offset, default: no capacity limit) or "
                          "free (the paper's embeddings)")
    net.add_argument("--position-scale", type=_args.positive_float, default=None,
                     help="spatial: embedding units per pixel (default 0.25)")
    net.add_argument("--embed-dim", type=_args.positive_int, default=None,
                     help="embedding dimensions E (default: 3 free; spatial: d offsets + 1 free)")
    net.add_argument("--no-foreground-head", action="store_true", default=None,
                     help="no foreground logit (use with --background-as-instance)")
    net.add_argument("--init", metavar="MODEL",
                     help="continue training this model file, 'bundled' for the bundled nuclei "
                          "model of the data's dimensionality, or 'none' for a new network "
                          "(default: 'bundled' for annotated images; a new network for synthetic "
                          "data, multi-channel images or when network options are given)")
    opt = p.add_argument_group("training")
    opt.add_argument("--window", type=_window, default=None,
                     help="output window per crop, e.g. 60 or 60,60; must be > f^l "
                          "(default: about 3 median object diameters, capped for speed)")
    opt.add_argument("--allow-small-window", action="store_true",
                     help="allow windows <= f^l (reproduces the paper's seams; not for real use)")
    opt.add_argument("--steps", type=_args.positive_int, default=None,
                     help=f"optimiser steps (default {TRAINING_DEFAULTS['steps']} for a new "
                          f"network, {CONTINUE_DEFAULTS['steps']} when continuing a model)")
    opt.add_argument("--lr", type=_args.positive_float, default=None,
                     help=f"Adam learning rate (default {TRAINING_DEFAULTS['lr']:g} for a new "
                          f"network, {CONTINUE_DEFAULTS['lr']:g} when continuing a model)")
    opt.add_argument("--lr-schedule", choices=("constant", "cosine"), default=TRAINING_DEFAULTS["lr_schedule"],
                     help="constant, or cosine decay to 0 at the last step (default cosine)")
    opt.add_argument("--batch-size", type=_args.positive_int, default=None,
                     help=f"crops per step (default {TRAINING_DEFAULTS['batch_size']}; "
                          f"{BATCH_SIZE_3D} in 3D)")
    opt.add_argument("--validation", type=float, default=TRAINING_DEFAULTS["validation"], metavar="FRACTION",
                     help="fraction of the annotations held out to pick the best checkpoint and "
                          f"tune the segmentation settings (default {TRAINING_DEFAULTS['validation']}; 0 = off)")
    opt.add_argument("--no-tune", action="store_true",
                     help="keep the segmentation settings instead of tuning them on the held-out part")
    opt.add_argument("--seed", type=int, default=TrainOptions.seed, help=f"random seed (default {TrainOptions.seed})")
    opt.add_argument("--no-augment", action="store_true",
                     help="no augmentation (flips, transpositions, contrast, gamma, blur, noise)")
    opt.add_argument("--augment-noise", type=float, default=TrainOptions.noise_std,
                     help="add Gaussian noise of std up to this to normalised crops "
                          f"(default {TrainOptions.noise_std:g})")
    opt.add_argument("--delta-v", type=float, default=LossSettings.delta_v,
                     help=f"pull margin (default {LossSettings.delta_v:g})")
    opt.add_argument("--delta-d", type=_args.positive_float, default=LossSettings.delta_d,
                     help=f"push margin: means are pushed 2*delta_d apart (default {LossSettings.delta_d:g})")
    opt.add_argument("--background-as-instance", action="store_true",
                     help="treat background as one more instance in the loss (the paper's setting)")
    opt.add_argument("--checkpoint-every", type=_args.positive_int, default=None, metavar="N",
                     help="save the model every N steps")
    opt.add_argument("--threads", type=_args.positive_int, default=None,
                     help="torch CPU threads (default: the CPUs this process may use, fewer when "
                          "other work keeps them busy; more than the CPUs are not used; "
                          "docs/THREADS.md)")
    opt.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-images", type=int, default=0, metavar="N",
                    help="synthetic: segment N held-out images and store AP@0.5 in the model")
    ev.add_argument("--eval-shape", type=_args.shape, default=None,
                    help="size of the held-out images (default 256x256 / 64x128x128)")
    ev.add_argument("--bandwidth", type=_args.positive_float, default=None,
                    help="mean-shift bandwidth to store in the model (default 2/3 delta_d)")
    ev.add_argument("--min-size", type=_args.positive_int, default=None,
                    help="smallest object (pixels) to keep, stored in the model (default 10)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def command_line(args) -> str:
    """The options of ``args`` as one ``shiftseg train ...`` line (recorded in the model)."""
    import shlex

    skip = {"run", "command", "quiet"}
    if not args.synthetic:
        skip |= OBJECT_OPTIONS | {"ndim", "shape", "eval_images", "eval_shape"}
    if _continues(args):
        skip |= NETWORK_OPTIONS  # ignored: the network comes from the --init file
    parts = ["shiftseg", "train"]
    for key, value in vars(args).items():
        if key in skip or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                parts.append(flag)
            elif isinstance(item, tuple):
                parts += [flag, ",".join(map(str, item))]
            else:
                parts += [flag, str(item)]
    return shlex.join(parts)


def _check(args):
    if args.synthetic and (args.image or args.labels):
        raise ShiftSegError("give either --synthetic or --image/--labels, not both")
    if not args.synthetic:
        if not args.image or not args.labels:
            raise ShiftSegError("give --image and --labels (or --synthetic lattice|random)")
        if len(args.image) != len(args.labels):
            raise ShiftSegError(f"got {len(args.image)} --image but {len(args.labels)} --labels; "
                                "give one --labels per --image")
        if args.eval_images:
            raise ShiftSegError("--eval-images needs --synthetic (held-out images are generated)")
        if args.mask and len(args.mask) != len(args.image):
            raise ShiftSegError(f"got {len(args.image)} --image but {len(args.mask)} --mask; "
                                "give one --mask per --image")
        if args.mask and args.sparse:
            raise ShiftSegError("give --mask (the annotated region) or --sparse (painted objects "
                                "plus a margin), not both")
    elif args.mask or args.sparse:
        raise ShiftSegError("--mask and --sparse describe annotated images; not with --synthetic")
    elif args.channels:
        raise ShiftSegError("--channels picks channels of --image files; synthetic images have one")
    if args.eval_images < 0:
        raise ShiftSegError(f"--eval-images must be >= 0, got {args.eval_images}")
    if args.seed < 0:
        raise ShiftSegError(f"--seed must be >= 0, got {args.seed}")
    if not 0 <= args.validation < 1:
        raise ShiftSegError(f"--validation must be a fraction in [0, 1), got {args.validation}")
    check_output(args.output)


def _network_options_given(args) -> list[str]:
    from ..training.train import NETWORK_DEFAULTS

    return sorted(k for k in NETWORK_DEFAULTS if getattr(args, k, None) is not None)


def _continues(args) -> bool:
    """Whether ``--init`` names a model to continue ('none' and not given: a new network)."""
    return args.init is not None and args.init.lower() != "none"


def _fill_defaults(args, ndim: int) -> None:
    """The start and the training defaults for ``ndim``-D data into ``args`` where not given,
    so that the model records them."""
    one_channel = not getattr(args, "channels", None) or len(args.channels) == 1  # as the bundled models
    if args.init is None and not args.synthetic and one_channel and not _network_options_given(args):
        args.init = DEFAULT_INIT
    for key, value in training_defaults(ndim, _continues(args)).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _init_choice(args) -> str | None:
    """The model file to continue from, or None for a new network (see the group's help)."""
    given = _network_options_given(args)
    if not _continues(args):
        return None
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ShiftSegError(f"{flags} describe a new network, but --init {args.init} continues an "
                            "existing one; give one or the other")
    return args.init


def _config(args, ndim: int):
    from ..network.modelio import bundled_model_path, load_model
    from ..training.train import NETWORK_DEFAULTS, network_config
    from ..training.train_setup import check_start

    init = _init_choice(args)
    channels = len(args.channels) if getattr(args, "channels", None) else 1
    if init is not None:
        model = load_model(bundled_model_path(ndim) if init == "bundled" else init)
        check_start(model, ndim, channels, "the --init model", " (--channels)")
        return model
    options = {k: getattr(args, k, None) for k in NETWORK_DEFAULTS}
    options["in_channels"] = channels if getattr(args, "channels", None) else None
    _anisotropic_options(args, ndim, options)
    return network_config(ndim, **options)


def run(args) -> int:
    import signal
    import threading
    from pathlib import Path

    from ..files.data import load_training_pair, read_array
    from ..training.train import FINAL_LOSS_STEPS, training_window
    from ..training.train_setup import TrainingJob, run_training, save_trained, synthetic_validation
    from ..util.threads import choose_threads
    from .synth import DEFAULT_SHAPES, generate, resolve_shape

    _check(args)
    if args.synthetic:
        ndim = len(args.shape) if args.shape else (args.ndim or 2)
        resolve_shape(args.ndim, args.shape)  # refuses --ndim/--shape contradictions
    else:
        pairs = [load_training_pair(i, l, channels=args.channels) for i, l in zip(args.image, args.labels)]
        ndim = pairs[0][1].ndim
        if any(p[1].ndim != ndim for p in pairs):
            raise ShiftSegError("all training images must have the same dimensionality")
    _fill_defaults(args, ndim)
    config = _config(args, ndim)
    geometry = config.geometry
    window = args.window
    if window is not None and len(window) == 1:
        window = window * ndim
    objects = None  # labels to size the window by (none for a generator of disks or spheres)
    if window is None and args.synthetic == "nuclei":
        objects = [generate("nuclei", args, DEFAULT_SHAPES[ndim], VALIDATION_SEED_BASE)[1]]
    elif window is None and not args.synthetic:
        objects = [lab for _, lab in pairs]
    window = training_window(geometry, window, objects, args.allow_small_window)
    validation_pairs = None
    if args.synthetic and args.validation > 0:
        # Fresh images from seeds training never draws: validation for a generator.
        val_shape = args.eval_shape or DEFAULT_SHAPES[ndim]
        validation_pairs = synthetic_validation(
            lambda seed: generate(args.synthetic, args, val_shape, seed, random_offset=True))

    source: Callable[[int], Any] | list
    if args.synthetic:
        # Input crop + context: crops see reflected image borders (as at inference) in about
        # half of the positions per axis, and real context in the others.
        shape = args.shape or tuple(a.training_input_size(w) + a.context for a, w in zip(geometry.axes, window))

        def synthetic_source(seed):
            return generate(args.synthetic, args, shape, seed, random_offset=True)
        source = synthetic_source
    else:
        source = pairs
    annotated: str | list | None = None
    if args.sparse:
        annotated = "painted"
    elif args.mask:
        annotated = [read_array(m) for m in args.mask]
    options = TrainOptions.recommended(
        ndim, _continues(args), steps=args.steps, lr=args.lr, lr_schedule=args.lr_schedule,
        batch_size=args.batch_size, seed=args.seed, output_window=window,
        allow_small_window=args.allow_small_window, augment=not args.no_augment,
        noise_std=args.augment_noise, validation=args.validation, tune=not args.no_tune,
        checkpoint_every=args.checkpoint_every, checkpoint_path=args.output,
        threads=choose_threads(args.threads), command=command_line(args),
        delta_v=args.delta_v, delta_d=args.delta_d, background_as_instance=args.background_as_instance)
    job = TrainingJob(source, None, config, options, Path(args.output), validation_pairs, annotated)

    bar = _args.progress_bar(total=args.steps, desc="training", unit="step", disable=args.quiet)
    recent = []

    def progress(step, parts):
        recent.append(parts["loss"])
        del recent[:-FINAL_LOSS_STEPS]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", push=f"{parts['push']:.3f}",
                        fg=f"{parts['foreground']:.3f}", refresh=False)
        bar.update(1)

    # Ctrl-C: finish the current step, then save what has been trained so far.
    cancel = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        model, history = run_training(job, progress=progress, cancel=cancel, device=args.device)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if args.bandwidth:
        model.meta["bandwidth"] = args.bandwidth
    if args.min_size:
        model.meta["min_size"] = args.min_size
    if args.eval_images:
        from ..inference.evaluate import default_bandwidth, evaluate_model

        eval_shape = args.eval_shape or DEFAULT_SHAPES[ndim]
        held_out = [generate(args.synthetic, args, eval_shape, EVAL_SEED_BASE + i, random_offset=True)
                    for i in range(args.eval_images)]
        result = evaluate_model(model, held_out, device=args.device)
        model.meta["bandwidth"] = default_bandwidth(model)
        model.meta["metrics"] = {
            "ap@0.5": round(result["ap@0.5"], 4),
            "false_splits": result["false_splits"], "false_merges": result["false_merges"],
            "images": args.eval_images, "shape": list(eval_shape),
            "bandwidth": model.meta["bandwidth"], "min_size": model.meta.get("min_size"),
            "seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.eval_images - 1}",
        }
    save_trained(job, model, history)
    status = "stopped early" if history["cancelled"] else "done"
    summary = (f"{status}: {history['steps_done']} steps in {history['seconds']:.0f} s, final loss "
               f"{model.meta['final_loss']:.4f}" if history["steps_done"] else f"{status}: no steps")
    record = model.meta.get("validation", {})
    if "ap@0.5" in record:
        how = "tuned" if "tuned" in record else "kept"
        summary += (f", held-out AP@0.5 {record.get('tuned', record)['ap@0.5']:.3f} "
                    f"(best step {record['best_step']}; settings {how}: bandwidth "
                    f"{model.meta['bandwidth']}, min size {model.meta['min_size']})")
    if "metrics" in model.meta:
        summary += f", AP@0.5 {model.meta['metrics']['ap@0.5']:.3f} on {args.eval_images} held-out images"
    print(f"{summary}; wrote {args.output}")
    return 130 if history["cancelled"] else 0
