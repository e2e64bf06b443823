"""bioimage.io model packages: export a shiftseg model, and read one back.

The package holds the *network* (what deepImageJ, ilastik or bioimageio.core can run):

- ``pytorch_state_dict`` weights (built by :func:`build_network` from the config stored as its
  architecture's kwargs) and the same network as ``torchscript``;
- one input ``raw`` (batch, channel, spatial axes) whose spatial sizes are declared as
  ``min + n·step`` with ``step`` = the grid period F_a of each axis and ``min`` the smallest
  valid input, so every size a spec-honouring tool picks is one the valid-convolution U-Net
  accepts; the output's spatial sizes are ``raw``'s minus the context (a ``SizeReference``
  with a negative offset), i.e. the output covers the centre of the input;
- the model's normalisation as ``scale_range`` preprocessing (the same percentiles, over the
  whole image);
- test tensors, a cover, a README and the paper's citation;
- shiftseg's own settings under ``config["shiftseg"]`` (bandwidth, thresholds, object size,
  and for spatial heads the position scale that is added to the first channels *after*
  stitching, in global coordinates: tools that only run the network get the offsets).

:func:`load_package` reads such a package back as a :class:`~napari_shiftseg.modelio.Model`
(``torch.load(weights_only=True)``: loading never executes code), so ``shiftseg segment -m
PACKAGE`` accepts it. Exporting needs ``bioimageio.spec`` (``pip install bioimageio.core``);
reading needs only PyYAML.
"""

from __future__ import annotations

import gc
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ._errors import ShiftSegError
from .unet import UNet, UNetConfig

#: The paper's code, as cited in the package.
CITATION = ("Rumberger, Yu, Hirsch, Dohmen, Guarino, Mosayebi, Bui, Plüddemann, Kainmüller: How "
            "Shift Equivariance Impacts Metric Learning for Instance Segmentation (ICCV 2021)")
CITATION_URL = "https://github.com/Kainmueller-Lab/shift_equivariance_unet"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
AXIS_IDS = {2: ("y", "x"), 3: ("z", "y", "x")}


def build_network(config: dict) -> UNet:
    """The architecture callable of an exported package: the U-Net of a stored config."""
    return UNet(UNetConfig.from_dict(config))


def _channel_names(config: UNetConfig) -> list[str]:
    d = config.geometry.ndim
    names = [f"offset_{a}" for a in AXIS_IDS[d]] if config.embedding == "spatial" else []
    names += [f"embedding_{i}" for i in range(config.embed_dim - len(names))]
    return names + (["foreground_logit"] if config.foreground_head else [])


def _test_input(model, rng) -> np.ndarray:
    """A synthetic nuclei image of a valid input size (a few grid cells past the minimum)."""
    from . import synth

    g = model.geometry
    size = tuple(a.nearest_valid_input(a.min_input_size + 2 * a.grid) for a in g.axes)
    image, _ = synth.nuclei(size, seed=int(rng.integers(1_000_000)))
    channels = model.config.in_channels
    return np.stack([image] * channels)[None].astype(np.float32)  # (1, C, *size)


def _cover(image: np.ndarray, output: np.ndarray, path: Path) -> None:
    """Input and the first three output channels side by side (the centre plane in 3D)."""
    import imageio.v3 as iio

    def plane(a):
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    def to_uint8(a):
        lo, hi = np.percentile(a, [1, 99])
        return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    raw = plane(image[0, 0])
    out = np.stack([to_uint8(plane(output[0, c])) for c in range(min(3, output.shape[1]))], -1)
    if out.shape[-1] < 3:
        out = np.concatenate([out] + [out[..., :1]] * (3 - out.shape[-1]), -1)
    pad = [((raw.shape[0] - out.shape[0]) // 2,) * 2, ((raw.shape[1] - out.shape[1]) // 2,) * 2, (0, 0)]
    out = np.pad(out, pad)
    left = np.repeat(to_uint8(raw)[..., None], 3, -1)
    side = np.concatenate([left, out[:left.shape[0], :left.shape[1]]], axis=1)
    scale = max(1, 256 // side.shape[0])  # covers are shown at a few hundred pixels
    iio.imwrite(path, np.kron(side, np.ones((scale, scale, 1), np.uint8)))


def export_package(model, out_dir, *, name: str | None = None, seed: int = 0) -> Path:
    """Write ``model`` as a bioimage.io package folder ``out_dir``; returns its rdf.yaml path.

    The description is validated by ``bioimageio.spec`` while it is built (a ShiftSegError says
    what it refused).
    """
    try:
        from bioimageio.spec import save_bioimageio_package_as_folder
        from bioimageio.spec.model import v0_5 as spec
    except ImportError:
        raise ShiftSegError("exporting a bioimage.io package needs bioimageio.spec: "
                            "pip install bioimageio.core") from None
    from .modelio import Model
    from .normalize import recorded_normalization, recorded_percentiles
    from .settings import SegmentationSettings

    if not isinstance(model, Model):
        raise ShiftSegError("export a loaded model (napari_shiftseg.modelio.load_model)")
    config, g = model.config, model.geometry
    if not g.valid:
        raise ShiftSegError("only valid-convolution models can be exported (same padding has no "
                            "exact tiling to declare)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ShiftSegError(f"{out_dir} exists and is not empty; choose a new folder")
    net = model.net.eval().cpu()
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        x = _test_input(model, rng)
        # The same normalisation inference applies (percentiles of the whole image, per channel).
        norm = recorded_normalization(x[0], model.meta, model.name, channels_first=True)
        with torch.no_grad():
            y = net(torch.from_numpy(np.asarray(norm(x[0]), np.float32)[None])).numpy()
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        torch.save(net.state_dict(), tmp / "weights.pt")
        # bioimage.io runs TorchScript (not torch.export). Tracing records the size checks of
        # UNet.forward as constants (TracerWarnings) but every layer stays size-generic: the
        # traced net runs any valid input size (tests/test_bmz.py).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(net, torch.from_numpy(np.asarray(norm(x[0]), np.float32)[None]),
                                       check_trace=False)
            scripted.save(str(tmp / "weights_torchscript.pt"))
        _cover(x, y, tmp / "cover.png")
        settings = SegmentationSettings.of(model)
        shiftseg = {"settings": settings.to_meta(), "object_diameter": model.meta.get("object_diameter"),
                    "embedding": config.embedding, "position_scale": config.position_scale,
                    "normalization": model.meta.get("normalization"),
                    "geometry": {"grid": list(g.grids), "context": list(g.contexts),
                                 "factors": [list(r) for r in g.factors] if g.factors else None},
                    "model_name": model.name}
        (tmp / "README.md").write_text(_readme(model, shiftseg), encoding="utf-8")
        low, high = recorded_percentiles(model.meta, model.name)  # what inference applies
        # bioimageio.spec's own id / version types (what validation turns the plain strings into)
        spatial_ids = [spec.AxisId(a) for a in AXIS_IDS[g.ndim]]
        raw_id, embeddings_id = spec.TensorId("raw"), spec.TensorId("embeddings")
        in_axes: list[spec.InputAxis] = [
            spec.BatchAxis(), spec.ChannelAxis(channel_names=[f"channel{c}" for c in range(config.in_channels)])]
        in_axes += [spec.SpaceInputAxis(id=a, size=spec.ParameterizedSize(min=ax.min_input_size, step=ax.grid))
                    for a, ax in zip(spatial_ids, g.axes)]
        out_axes: list[spec.OutputAxis] = [
            spec.BatchAxis(), spec.ChannelAxis(channel_names=_channel_names(config))]
        out_axes += [spec.SpaceOutputAxis(id=a, size=spec.SizeReference(tensor_id=raw_id, axis_id=a,
                                                                      offset=-ax.context))
                     for a, ax in zip(spatial_ids, g.axes)]
        preprocessing: list[spec.PreprocessingDescr] = [spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
            axes=spatial_ids, min_percentile=float(low), max_percentile=float(high)))]
        arch = spec.ArchitectureFromLibraryDescr(import_from="napari_shiftseg.bmz",
                                                 callable=spec.Identifier("build_network"),
                                                 kwargs={"config": json.loads(json.dumps(config.to_dict()))})
        version = spec.Version(torch.__version__.split("+")[0])
        descr = spec.ModelDescr(
            name=_safe_name(name or f"shiftseg {Path(model.name).stem}"),
            description=("Valid-convolution U-Net for instance segmentation by metric learning "
                         "(napari-shiftseg): exact tile-and-stitch on the f^l grid"),
            authors=[spec.Author(name="napari-shiftseg")],
            cite=[spec.CiteEntry(text=CITATION, url=spec.HttpUrl(CITATION_URL))],
            license=spec.LicenseId("BSD-3-Clause"),
            documentation=spec.FileDescr(source=tmp / "README.md"),
            covers=[spec.FileDescr(source=tmp / "cover.png")],
            tags=["instance-segmentation", "metric-learning", "nuclei", f"{g.ndim}d", "pytorch"],
            inputs=[spec.InputTensorDescr(id=raw_id, axes=in_axes, preprocessing=preprocessing,
                                          test_tensor=spec.FileDescr(source=tmp / "test_input.npy"))],
            outputs=[spec.OutputTensorDescr(id=embeddings_id, axes=out_axes,
                                            test_tensor=spec.FileDescr(source=tmp / "test_output.npy"))],
            weights=spec.WeightsDescr(
                pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                    source=tmp / "weights.pt", architecture=arch, pytorch_version=version),
                torchscript=spec.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt",
                                                         pytorch_version=version, parent="pytorch_state_dict")),
            config=spec.Config.model_validate({"shiftseg": json.loads(json.dumps(shiftseg))}),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # bioimageio.spec leaves the files it hashed open; close them before ``tmp`` goes.
            warnings.simplefilter("ignore", ResourceWarning)
            save_bioimageio_package_as_folder(descr, output_path=out_dir)
            del descr
            gc.collect()
    return next(out_dir / n for n in RDF_NAMES if (out_dir / n).exists())


def _safe_name(text: str) -> str:
    """A package name bioimage.io accepts (letters, digits, ``_+- ()``)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    return "".join(c if c in allowed else "-" for c in text)[:128]


def _readme(model, shiftseg: dict) -> str:
    g = model.geometry
    return f"""# {model.name} (napari-shiftseg)

A valid-convolution U-Net that maps every pixel to an embedding; mean-shift clustering of the
embeddings gives instances. Exported by napari-shiftseg.

- Input `raw`: sizes `min + n·step` per spatial axis (step = grid period {list(g.grids)}); the
  output `embeddings` is the centre of the input, smaller by the context {list(g.contexts)}.
- Tiling: output tiles that are multiples of the grid, with inputs on the global grid, stitch
  into exactly the whole-image result (Rumberger et al., ICCV 2021).
- Channels: {", ".join(_channel_names(model.config))}.
""" + ("""- Spatial head: the first channels are offsets; napari-shiftseg adds the global voxel position
  times the position scale ({scale}) after stitching, then clusters. Tools that only run the
  network get the offsets.
""".format(scale=shiftseg["position_scale"]) if model.config.embedding == "spatial" else "") + """
Segmentation settings (bandwidth, thresholds) are under `config.shiftseg` in the RDF.
"""


def is_package(path) -> bool:
    path = Path(path)
    return (path.is_dir() and any((path / n).is_file() for n in RDF_NAMES)) or \
        (path.is_file() and path.suffix.lower() == ".zip")


def _read(path: Path, tmp: Path, with_weights: bool):
    """(rdf dict, its folder) of a package folder or .zip (only the rdf and .pt files extracted)."""
    import yaml

    root = path
    if path.is_file():
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist()
                         if Path(n).name in RDF_NAMES or (with_weights and n.endswith(".pt"))]
                for n in names:
                    if Path(n).is_absolute() or ".." in Path(n).parts:
                        raise ShiftSegError(f"{path.name} holds a file outside the package ({n})")
                archive.extractall(tmp, members=names)
        except zipfile.BadZipFile:
            raise ShiftSegError(f"{path.name} is not a readable bioimage.io package (.zip)") from None
        root = tmp
    rdf_path = next((root / n for n in RDF_NAMES if (root / n).is_file()), None)
    if rdf_path is None:
        raise ShiftSegError(f"{path.name} has no rdf.yaml: not a bioimage.io package")
    try:
        rdf = yaml.safe_load(rdf_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ShiftSegError(f"{path.name}: its rdf.yaml is not readable YAML") from None
    rdf = rdf if isinstance(rdf, dict) else {}
    ours = (rdf.get("config") or {}).get("shiftseg")
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict") or {}
    arch = weights.get("architecture") or {}
    if not ours or arch.get("import_from") != "napari_shiftseg.bmz":
        raise ShiftSegError(f"{path.name} is a bioimage.io package but does not hold a shiftseg "
                            "network; use it with bioimageio.core")
    try:
        config = UNetConfig.from_dict(arch["kwargs"]["config"])
    except (KeyError, TypeError):
        raise ShiftSegError(f"{path.name}: its network description is incomplete") from None
    meta = {**(ours.get("settings") or {}), "normalization": ours.get("normalization"),
            "object_diameter": ours.get("object_diameter"), "bioimageio_package": str(path)}
    return config, {k: v for k, v in meta.items() if v is not None}, root, weights


def read_package_metadata(path):
    """The :class:`~napari_shiftseg.modelio.ModelInfo` of a package, as
    :func:`napari_shiftseg.modelio.read_metadata` gives for a model file."""
    from .modelio import ModelInfo

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        config, meta, _, _ = _read(path, Path(tmp), with_weights=False)
    return ModelInfo(config, meta, None, path.name)


def load_package(path, device="cpu"):
    """A shiftseg model from a bioimage.io package folder or .zip written by :func:`export_package`
    (``torch.load(weights_only=True)``: no code from the package runs)."""
    from .modelio import Model

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        config, meta, root, weights = _read(path, Path(tmp), with_weights=True)
        source = root / str(weights.get("source", ""))
        if not source.is_file() or root.resolve() not in source.resolve().parents:
            raise ShiftSegError(f"{path.name}: its weights file {weights.get('source')!r} is missing")
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure: a corrupt or hostile file
            raise ShiftSegError(f"{path.name}: the weights cannot be read safely ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ShiftSegError(f"{path.name}: the weights file is not a state dict of tensors")
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise ShiftSegError(f"{path.name}: the weights contain NaN or infinite values")
    net = UNet(config)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise ShiftSegError(f"{path.name}: the weights do not fit the network ({str(err)[:200]})") from None
    return Model(net.to(device).eval(), meta, path)
