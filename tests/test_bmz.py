"""bioimage.io export (``shiftseg export-bmz``): the package validates with bioimageio.spec,
bioimageio.core reproduces its test outputs, and shiftseg reads it back safely."""

import shutil
import zipfile

import numpy as np
import pytest
import torch

from napari_shiftseg.cli import main
from napari_shiftseg.inference.predict import predict_whole
from napari_shiftseg.network.modelio import Model, load_model, save_model
from napari_shiftseg.network.unet import UNet
from napari_shiftseg.training.train import network_config
from napari_shiftseg.util._errors import ShiftSegError

pytest.importorskip("bioimageio.spec")
torch.set_num_threads(1)
NORM = {"method": "percentile", "low": 1.0, "high": 99.8}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet(network_config(2, levels=2, base_channels=4))
    return save_model(Model(net, {"normalization": NORM, "bandwidth": 1.25, "min_size": 7,
                                  "object_diameter": 20.0}),
                      tmp_path_factory.mktemp("m") / "nuclei.safetensors")


@pytest.fixture(scope="module")
def package(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bmz") / "pkg"
    assert main(["export-bmz", str(model_file), "-o", str(out), "--zip"]) == 0
    return out


# bioimageio.spec/core leave the files they hash open (their ResourceWarnings, not ours).
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning",
                            "ignore:`torch.jit:DeprecationWarning")
def test_package_validates_and_reproduces_its_test_outputs(package):
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    rdf = package / "rdf.yaml"
    descr = load_description(rdf)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.display()
    # valid sizes: min + n·step with step = f^l = 4, and the output the input minus the context
    y = next(a for a in descr.inputs[0].axes if str(a.id) == "y")
    assert y.size.step == 4 and y.size.min == 44  # smallest valid input of l = 2 (context 40)
    out_y = next(a for a in descr.outputs[0].axes if str(a.id) == "y")
    assert out_y.size.offset == -40
    assert {"pytorch_state_dict", "torchscript"} <= {w for w, v in descr.weights if v is not None}
    summary = test_model(rdf)  # runs both weight formats on the test tensors
    failed = [(d.name, [e.msg for e in d.errors][:2]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    import yaml

    assert yaml.safe_load(rdf.read_text())["config"]["shiftseg"]["settings"]["bandwidth"] == 1.25
    assert (package / "cover.png").stat().st_size > 0 and (package / "README.md").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_runs_other_valid_sizes(package, model_file):
    traced = torch.jit.load(str(package / "weights_torchscript.pt"))
    net = load_model(model_file).net
    x = torch.randn(1, 1, 52, 60)  # 44 + 2·4 and 44 + 4·4: other sizes than the traced one
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-5)


@pytest.mark.parametrize("which", ["folder", "zip"])
def test_segment_accepts_the_package(package, model_file, tmp_path, which):
    path = package if which == "folder" else package.with_suffix(".zip")
    back = load_model(path)
    assert back.meta["bandwidth"] == 1.25 and back.meta["min_size"] == 7
    image = np.random.default_rng(0).random((40, 44)).astype(np.float32)
    np.testing.assert_allclose(predict_whole(image, back, device="cpu"),
                               predict_whole(image, load_model(model_file), device="cpu"), atol=1e-6)
    np.save(tmp_path / "img.npy", image)
    assert main(["segment", str(tmp_path / "img.npy"), "-m", str(path), "--tile", "16", "-o",
                 str(tmp_path / "o.zarr"), "--device", "cpu", "--quiet", "--diameter", "none"]) == 0


def test_hostile_or_foreign_packages_are_refused(package, tmp_path):
    import yaml

    foreign = tmp_path / "foreign"
    shutil.copytree(package, foreign)
    rdf = yaml.safe_load((foreign / "rdf.yaml").read_text())
    del rdf["config"]["shiftseg"]
    (foreign / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(ShiftSegError, match="does not hold a shiftseg network"):
        load_model(foreign)
    pickled = tmp_path / "pickled"
    shutil.copytree(package, pickled)
    torch.save({"weight": object()}, pickled / "weights.pt")  # not tensors: needs pickle code
    with pytest.raises(ShiftSegError, match="cannot be read safely"):
        load_model(pickled)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.write(package / "rdf.yaml", "rdf.yaml")
        archive.writestr("../weights.pt", b"x")
    with pytest.raises(ShiftSegError, match="outside the package"):
        load_model(evil)
    with pytest.raises(ShiftSegError, match="not empty"):
        main_export(package)


def main_export(target):
    from napari_shiftseg.network.bmz import export_package
    from napari_shiftseg.network.modelio import load_bundled

    export_package(load_bundled(2), target)


def test_export_never_replaces_an_existing_zip(model_file, tmp_path, capsys):
    """issue 25: `export-bmz -o e --zip` with an existing e.zip is refused before writing."""
    (tmp_path / "e.zip").write_bytes(b"mine")
    assert main(["export-bmz", str(model_file), "-o", str(tmp_path / "e"), "--zip"]) == 2
    assert (tmp_path / "e.zip").read_bytes() == b"mine" and not (tmp_path / "e").exists()
    assert "exists" in capsys.readouterr().err
