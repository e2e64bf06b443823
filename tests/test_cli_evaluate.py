"""``shiftseg evaluate`` from the command line."""

import json

import numpy as np
import pytest
from helpers import save_standardized  # noqa: E402

from napari_shiftseg.cli import main


def disk_labels(shape=(48, 48)):
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for index, (cy, cx) in enumerate([(14, 14), (34, 34), (12, 36)], start=1):
        labels[(grid[0] - cy) ** 2 + (grid[1] - cx) ** 2 <= 36] = index
    return labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    labels = disk_labels()
    image = (labels > 0).astype(np.float32) * 100 + 5
    np.save(root / "img.npy", image)
    np.save(root / "lbl.npy", labels)
    return {"root": root, "image": str(root / "img.npy"), "labels": str(root / "lbl.npy"),
            "model": str(save_standardized(root / "m.safetensors", image))}


def test_table_and_json(files, capsys):
    out = files["root"] / "scores.json"
    rc = main(["evaluate", files["image"], files["image"], "--labels", files["labels"],
               files["labels"], "-m", files["model"], "--baseline", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("ap@0.5", "mAP", "recall@0.5", "false_splits", "false_merges", "overall",
                 "otsu+watershed", "m.safetensors"):
        assert word in text
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 4  # 2 images x (model, baseline)
    baseline = data["summary"]["otsu+watershed"]
    assert baseline["ap@0.5"] == 1.0 and baseline["n_gt"] == 6 and baseline["n_pred"] == 6
    model = data["summary"]["m.safetensors"]
    assert model["n_gt"] == 6 and 0.0 <= model["ap@0.5"] <= 1.0


def test_baseline_only(files, capsys):
    assert main(["evaluate", files["image"], "--labels", files["labels"], "--no-model"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("overall")]
    assert len(lines) == 1 and "otsu+watershed" in lines[0] and "1.000" in lines[0]


def test_count_mismatch_is_one_line_error(files, capsys):
    rc = main(["evaluate", files["image"], "--labels", files["labels"], files["labels"],
               "--no-model"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label image" in err[0]


def test_model_dimension_mismatch(files, capsys):
    root = files["root"]
    np.save(root / "vol.npy", np.zeros((8, 8, 8), np.float32))
    np.save(root / "vol_lbl.npy", np.zeros((8, 8, 8), np.int32))
    rc = main(["evaluate", str(root / "vol.npy"), "--labels", str(root / "vol_lbl.npy"),
               "-m", files["model"]])
    assert rc == 2 and "2D" in capsys.readouterr().err
