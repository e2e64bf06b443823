"""The manifest validates and the package root stays headless."""

import subprocess
import sys

from npe2 import PluginManifest


def test_manifest_validates():
    manifest = PluginManifest.from_distribution("napari-shiftseg")
    assert {w.display_name for w in manifest.contributions.widgets} >= {"Segment", "Train", "Inspect"}
    assert {s.key for s in manifest.contributions.sample_data} == {"lattice15", "lattice16", "spheres3d", "large3d"}
    assert "napari/layers/segment" in manifest.contributions.menus
    assert set(manifest.contributions.configurations["inference"].properties) == {
        "device", "memory_budget_gb", "tile_size", "idle_gc"}
    for command in manifest.contributions.commands:
        assert not command.python_name.startswith("napari_shiftseg:"), command.python_name
    manifest.validate_imports()


def test_import_stays_headless():
    code = ("import sys, napari_shiftseg, napari_shiftseg._reader, napari_shiftseg._sample_data; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'PyQt6', 'qtpy', 'vispy')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
