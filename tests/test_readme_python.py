"""The README's Python example runs as written (in a temporary folder) and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model, group = namespace["model"], namespace["group"]
    assert model.meta["steps"] == 30 and "validation" in model.meta
    assert group.attrs["complete"] is True
    assert (tmp_path / "nuclei.zarr" / "labels").is_dir()
    printed = capsys.readouterr().out
    assert re.match(r"\d+ objects; labels in nuclei.zarr/labels", printed), printed
