"""The wheel ships the built frontend and registers the plugin and the tb-bn command, quietly."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_bundle_and_entry_points(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--verbose",
            "-w",
            str(tmp_path),
            REPO,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # setuptools warns about data folders missing from the packages configuration (the
    # built frontend was once shipped that way): a user installing must see no warning.
    build_output = proc.stdout + proc.stderr
    assert "absent from the `packages` configuration" not in build_output, build_output[-3000:]
    assert "SetuptoolsDeprecationWarning" not in build_output, build_output[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "tb_bn_plugin-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        bundle = z.read("tb_bn_plugin/plugin/static/index.js")
    with open(os.path.join(REPO, "tb_bn_plugin", "plugin", "static", "index.js"), "rb") as f:
        assert bundle == f.read()
    assert "bn_internals = tb_bn_plugin.plugin.loader:BNInternalsLoader" in entry_points
    assert "tb-bn = tb_bn_plugin.cli:main" in entry_points
    assert not any(n.startswith(("frontend/", "tests/")) for n in names)
