"""issue 9: hostile model metadata and TIFF bytes give one-line errors, never tracebacks.

Hypothesis draws random configs (wrong types, huge and negative numbers, random tensor shapes)
and damaged TIFF files (truncations, bit flips). Every case must load, or fail with a
ShiftSegError (or an error :func:`failure_message` maps) of one line. Example counts come from
the ``ci`` profile in conftest.py (15 each), so this runs in seconds.
"""

import io
import json

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from napari_shiftseg.files.io import read_image
from napari_shiftseg.network.modelio import FORMAT, load_model
from napari_shiftseg.network.unet import UNetConfig
from napari_shiftseg.util._errors import ShiftSegError, failure_message

ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.integers(-(10**12), 10**12),
                st.floats(allow_nan=True), st.text(max_size=5), st.lists(st.integers(0, 3), max_size=3),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
DEFAULT = UNetConfig().to_dict()


@st.composite
def configs(draw):
    config = json.loads(json.dumps(DEFAULT))
    for key in draw(st.lists(st.sampled_from(sorted(DEFAULT["geometry"])), max_size=3)):
        config["geometry"][key] = draw(ANY)
    for key in draw(st.lists(st.sampled_from(sorted(set(DEFAULT) - {"geometry"})), max_size=3)):
        config[key] = draw(ANY)
    if draw(st.booleans()):
        config = draw(st.one_of(ANY, st.just(config)))
    return config


TENSORS = st.dictionaries(st.sampled_from(["head.weight", "head.bias", "down.0.0.weight", "x"]),
                          st.lists(st.integers(0, 4), min_size=0, max_size=5), max_size=4)
META = st.one_of(st.just("{}"), st.just("[1, 2]"), st.just("{bad"),
                 st.dictionaries(st.sampled_from(["bandwidth", "min_size", "fg_threshold", "loss"]),
                                 ANY, max_size=3).map(json.dumps))


def assert_one_line(err: BaseException):
    message = failure_message(err)
    if message is None:
        raise err  # a traceback: the test fails and shows it
    assert "\n" not in message.strip(), message


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(config=configs(), tensors=TENSORS, meta=META)
def test_model_metadata_fuzz(tmp_path, config, tensors, meta):
    path = tmp_path / "m.safetensors"
    state = {name: torch.zeros(shape) for name, shape in tensors.items()} or {"x": torch.zeros(1)}
    save_file(state, str(path), metadata={"format": FORMAT, "config": json.dumps(config),
                                          "meta": meta, "version": "0"})
    try:
        load_model(path)
    except ShiftSegError as err:
        assert_one_line(err)


def _tiff(compression) -> bytes:
    buffer = io.BytesIO()
    image = np.random.default_rng(0).random((24, 20)).astype(np.float32)
    tifffile.imwrite(buffer, image, compression=compression)
    return buffer.getvalue()


TIFFS = {"raw": _tiff(None), "zlib": _tiff("zlib")}


@st.composite
def damaged(draw):
    data = bytearray(TIFFS[draw(st.sampled_from(sorted(TIFFS)))])
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data) - 1))]
    for position in draw(st.lists(st.integers(0, max(len(data) * 8 - 1, 0)), max_size=8)):
        if data:
            data[position // 8] ^= 1 << (position % 8)
    return bytes(data)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=damaged())
def test_tiff_bytes_fuzz(tmp_path, data):
    path = tmp_path / "image.tif"
    path.write_bytes(data)
    try:
        image = read_image(path)
        nbytes = int(np.prod(image.shape)) * np.dtype(image.dtype).itemsize
        corner = image if nbytes < 2**26 else image[(slice(0, 8),) * image.ndim]
        np.asarray(corner.compute() if hasattr(corner, "compute") else corner)
    except Exception as err:  # noqa: BLE001 - classified by assert_one_line
        assert_one_line(err)


@pytest.mark.parametrize("kind", sorted(TIFFS))
def test_every_truncation_of_a_small_tiff(tmp_path, kind):
    """Exhaustive over cut points (cheap: a few hundred bytes of header and data)."""
    data = TIFFS[kind]
    path = tmp_path / "image.tif"
    for cut in sorted(set(range(0, min(len(data), 400))) | set(range(400, len(data), 97))):
        path.write_bytes(data[:cut])
        try:
            np.asarray(read_image(path))
        except Exception as err:  # noqa: BLE001
            assert_one_line(err)
