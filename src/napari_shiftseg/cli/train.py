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

from .._errors import ShiftSegError
from . import _args
from .synth import add_object_options

#: Synthetic-object options (shared with ``shiftseg synth``), recorded only with --synthetic.
OBJECT_OPTIONS = {"spacing", "radius", "radius_jitter", "density", "n_objects", "noise", "elastic"}
#: Network options, ignored (and not recorded) when continuing from --init.
NETWORK_OPTIONS = {"levels", "factor", "upsampling", "padding", "base_channels", "embed_dim",
                   "no_foreground_head"}

#: Seeds of held-out evaluation images start here; training draws seeds below 2**31 - 1.
EVAL_SEED_BASE = 2**31


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
    data.add_argument("--synthetic", choices=("lattice", "random"),
                      help="train on fresh synthetic images instead of files")
    data.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                      help="synthetic: 2 or 3 (default: from --shape, else 2)")
    data.add_argument("--shape", type=_args.shape, default=None,
                      help="synthetic: size of each generated image (default: input crop + context)")
    add_object_options(data)
    net = p.add_argument_group("network")
    net.add_argument("--levels", type=_args.positive_int, default=3, help="pooling levels l (default 3)")
    net.add_argument("--factor", type=int, default=2, help="pooling factor f (default 2)")
    net.add_argument("--upsampling", choices=("learnt", "nearest"), default="learnt",
                     help="learnt (transposed conv, default) or nearest")
    net.add_argument("--padding", choices=("valid", "same"), default="valid",
                     help="valid (exact tiling, default) or same (for comparison only)")
    net.add_argument("--base-channels", type=_args.positive_int, default=16,
                     help="channels of the first level (default 16)")
    net.add_argument("--embed-dim", type=_args.positive_int, default=3,
                     help="embedding dimensions E (default 3)")
    net.add_argument("--no-foreground-head", action="store_true",
                     help="no foreground logit (use with --background-as-instance)")
    net.add_argument("--init", metavar="MODEL",
                     help="continue training this model file (the network options above are ignored)")
    opt = p.add_argument_group("training")
    opt.add_argument("--window", type=_window, default=None,
                     help="output window per crop, e.g. 36 or 36,36; must be > f^l "
                          "(default: the raw output for max(4 f^l, 32))")
    opt.add_argument("--allow-small-window", action="store_true",
                     help="allow windows <= f^l (reproduces the paper's seams; not for real use)")
    opt.add_argument("--steps", type=_args.positive_int, default=1000, help="optimiser steps (default 1000)")
    opt.add_argument("--lr", type=_args.positive_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    opt.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                     help="constant, or cosine decay to 0 at the last step (default constant)")
    opt.add_argument("--batch-size", type=_args.positive_int, default=1, help="crops per step (default 1)")
    opt.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    opt.add_argument("--no-augment", action="store_true", help="no random flips / noise")
    opt.add_argument("--augment-noise", type=float, default=0.0,
                     help="add Gaussian noise of std up to this to normalised crops (default 0)")
    opt.add_argument("--delta-v", type=float, default=0.5, help="pull margin (default 0.5)")
    opt.add_argument("--delta-d", type=_args.positive_float, default=3.0,
                     help="push margin: means are pushed 2*delta_d apart (default 3)")
    opt.add_argument("--background-as-instance", action="store_true",
                     help="treat background as one more instance in the loss (the paper's setting)")
    opt.add_argument("--checkpoint-every", type=_args.positive_int, default=None, metavar="N",
                     help="save the model every N steps")
    opt.add_argument("--threads", type=_args.positive_int, default=None, help="torch CPU threads")
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
    if args.init:
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
    if args.eval_images < 0:
        raise ShiftSegError(f"--eval-images must be >= 0, got {args.eval_images}")
    if args.seed < 0:
        raise ShiftSegError(f"--seed must be >= 0, got {args.seed}")
    if not str(args.output).endswith(".safetensors"):
        raise ShiftSegError(f"the model file must end in .safetensors, got {args.output}")


def _config(args, ndim: int):
    from ..geometry import UNetGeometry
    from ..modelio import load_model
    from ..unet import UNetConfig

    if args.init:
        model = load_model(args.init)
        if model.geometry.ndim != ndim:
            raise ShiftSegError(f"--init model is {model.geometry.ndim}D but the data are {ndim}D")
        return model
    geometry = UNetGeometry(ndim=ndim, levels=args.levels, factor=args.factor, padding=args.padding)
    return UNetConfig(geometry=geometry, base_channels=args.base_channels, embed_dim=args.embed_dim,
                      upsampling=args.upsampling, foreground_head=not args.no_foreground_head)


def run(args) -> int:
    import signal
    import threading

    from tqdm import tqdm

    from ..data import load_training_pair
    from ..modelio import save_model
    from ..train import FINAL_LOSS_STEPS, default_training_window, train
    from .synth import DEFAULT_SHAPES, generate, resolve_shape

    _check(args)
    if args.synthetic:
        ndim = len(args.shape) if args.shape else (args.ndim or 2)
        resolve_shape(args.ndim, args.shape)  # refuses --ndim/--shape contradictions
    else:
        pairs = [load_training_pair(i, l) for i, l in zip(args.image, args.labels)]
        ndim = pairs[0][0].ndim
        if any(p[0].ndim != ndim for p in pairs):
            raise ShiftSegError("all training images must have the same dimensionality")
    config = _config(args, ndim)
    geometry = config.geometry
    window = args.window
    if window is not None and len(window) == 1:
        window = window * ndim
    window = geometry.check_training_window(window or default_training_window(geometry),
                                            allow_small=args.allow_small_window)

    if args.synthetic:
        # Input crop + context: crops see reflected image borders (as at inference) in about
        # half of the positions per axis, and real context in the others.
        shape = args.shape or tuple(geometry.training_input_size(w) + geometry.context for w in window)

        def source(seed):
            return generate(args.synthetic, args, shape, seed, random_offset=True)
        labels = None
    else:
        source, labels = pairs, None

    bar = tqdm(total=args.steps, desc="training", unit="step", disable=args.quiet, dynamic_ncols=True)
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
        model, history = train(
            source, labels, config, steps=args.steps, lr=args.lr, lr_schedule=args.lr_schedule,
            output_window=window,
            batch_size=args.batch_size, seed=args.seed, allow_small_window=args.allow_small_window,
            augment=not args.no_augment, noise_std=args.augment_noise,
            checkpoint_every=args.checkpoint_every, checkpoint_path=args.output, progress=progress,
            cancel=cancel, device=args.device, threads=args.threads, delta_v=args.delta_v,
            delta_d=args.delta_d, background_as_instance=args.background_as_instance,
            command=command_line(args),
        )
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if args.bandwidth:
        model.meta["bandwidth"] = args.bandwidth
    if args.min_size:
        model.meta["min_size"] = args.min_size
    if args.eval_images:
        from ..evaluate import default_bandwidth, evaluate_model

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
    model.net.cpu()
    save_model(model, args.output)
    status = "stopped early" if history["cancelled"] else "done"
    summary = (f"{status}: {history['steps_done']} steps in {history['seconds']:.0f} s, final loss "
               f"{model.meta['final_loss']:.4f}" if history["steps_done"] else f"{status}: no steps")
    if "metrics" in model.meta:
        summary += f", AP@0.5 {model.meta['metrics']['ap@0.5']:.3f} on {args.eval_images} held-out images"
    print(f"{summary}; wrote {args.output}")
    return 130 if history["cancelled"] else 0
