"""The core runs without the napari extra: segment and check on a headless worker.

A core-only install leaves out napari, Qt, magicgui, npe2 and matplotlib (pyproject's
``napari`` extra). Here those imports are made to fail in a subprocess, which then runs the
CLI: what a cluster worker with only the core would see.
"""

import subprocess
import sys

import numpy as np

BLOCKER = """
import sys, importlib.abc
BLOCKED = ("napari", "magicgui", "qtpy", "PyQt6", "PyQt5", "PySide6", "vispy", "matplotlib", "npe2")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (core-only test)")
sys.meta_path.insert(0, Block())
from napari_shiftseg.cli import main
code = main(sys.argv[1:])
bad = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
assert not bad, bad
sys.exit(code)
"""


def _run(*args):
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True)


def test_segment_and_check_without_the_napari_extra(tmp_path):
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64), np.float32)
    yy, xx = np.indices(image.shape)
    for cy, cx in rng.integers(10, 54, (6, 2)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 1.0
    np.save(tmp_path / "img.npy", image + rng.normal(0, 0.05, image.shape).astype(np.float32))
    out = _run("segment", str(tmp_path / "img.npy"), "-o", str(tmp_path / "out.zarr"),
               "--tile", "32", "--device", "cpu", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "objects in 'labels'" in out.stdout
    out = _run("check", str(tmp_path / "img.npy"), "--tile", "32", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "exact" in out.stdout


def test_figures_say_what_is_missing():
    """The figures are the one thing that needs matplotlib: a sentence, not a traceback."""
    code = BLOCKER.split("from napari_shiftseg.cli")[0] + (
        "from napari_shiftseg.util._errors import ShiftSegError\n"
        "from napari_shiftseg.reproduce import figures\n"
        "try:\n    figures.new_figure()\nexcept ShiftSegError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "figures need matplotlib" in out.stdout
