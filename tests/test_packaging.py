"""One version source, and the checks CI runs are the ones pre-commit runs."""

import importlib.metadata
from pathlib import Path

import napari_shiftseg

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_source():
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("\n[")[0]
    assert importlib.metadata.version("napari-shiftseg") == napari_shiftseg.__version__


def test_pre_commit_runs_the_ci_linters():
    ci = (ROOT / "scripts" / "test.sh").read_text()
    hooks = (ROOT / ".pre-commit-config.yaml").read_text()
    for tool in ("ruff check", "-m mypy"):
        assert tool in ci and tool in hooks, tool
