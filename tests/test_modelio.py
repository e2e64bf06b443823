import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from napari_shiftseg.network.geometry import UNetGeometry
from napari_shiftseg.network.modelio import load_model, read_metadata, save_model
from napari_shiftseg.network.unet import UNet, UNetConfig
from napari_shiftseg.util._errors import ShiftSegError


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=2)).eval()


def test_round_trip(tmp_path, net):
    path = save_model(net, tmp_path / "m.safetensors", meta={"normalization": {"method": "percentile"}})
    model = load_model(path)
    assert model.config == net.config and model.meta["normalization"]["method"] == "percentile"
    x = torch.randn(1, 1, 52, 52)
    with torch.no_grad():
        assert torch.equal(model.net(x), net(x))
    assert read_metadata(path).config.geometry.levels == 2


class _Hostile:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Hostile(str(marker))))
    with pytest.raises(ShiftSegError, match="pickle"):
        load_model(path)
    torch_path = tmp_path / "evil2.safetensors"
    torch.save({"x": _Hostile(str(marker))}, torch_path)
    with pytest.raises(ShiftSegError, match="pickle"):
        load_model(torch_path)
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path, net):
    good = save_model(net, tmp_path / "m.safetensors").read_bytes()
    for name, data in {"truncated": good[: len(good) // 2], "garbage": b"hello world, not a model",
                       "empty": b"", "header": good[:20]}.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ShiftSegError, match="corrupt|truncated|not a shiftseg"):
            load_model(path)


def test_wrong_shapes_and_foreign_files(tmp_path, net):
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"format": "napari-shiftseg/1", "meta": "{}", "version": "0"}
    bigger = UNetConfig(geometry=UNetGeometry(ndim=2, levels=2), base_channels=4)
    save_file(state, str(tmp_path / "shape.safetensors"), metadata={**meta, "config": json.dumps(bigger.to_dict())})
    with pytest.raises(ShiftSegError, match="do not match"):
        load_model(tmp_path / "shape.safetensors")
    save_file(state, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ShiftSegError, match="not a shiftseg model"):
        load_model(tmp_path / "foreign.safetensors")
    save_file(state, str(tmp_path / "badcfg.safetensors"), metadata={**meta, "config": "{not json"})
    with pytest.raises(ShiftSegError, match="unreadable"):
        load_model(tmp_path / "badcfg.safetensors")
    with pytest.raises(ShiftSegError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ShiftSegError, match=".safetensors"):
        save_model(net, tmp_path / "model.pt")


def test_header_length_starting_with_pickle_byte_loads(tmp_path, net):
    """A valid file whose 8-byte header length starts with 0x80 is not a pickle."""
    meta = {"pad": ""}
    path = save_model(net, tmp_path / "m.safetensors", meta=meta)
    while path.read_bytes()[:1] != b"\x80":
        meta["pad"] += " "
        path = save_model(net, path, meta=meta)
    assert load_model(path).config == net.config


def test_read_metadata_is_typed_and_its_settings_are_the_model_s(tmp_path):
    from napari_shiftseg.network.modelio import ModelInfo, load_bundled
    from napari_shiftseg.network.settings import SegmentationSettings

    path = save_model(load_bundled(3), tmp_path / "m.safetensors")
    info = read_metadata(path)
    assert isinstance(info, ModelInfo) and info.name == "m.safetensors"
    assert info.geometry == load_model(path).geometry
    # One reader of the recorded settings, with or without the weights.
    assert info.settings() == SegmentationSettings.of(load_model(path)) == SegmentationSettings.of_meta(info.meta)
    assert info.settings().bandwidth == info.meta["bandwidth"]
