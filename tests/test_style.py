"""Style is part of the test command: ruff's lint and format checks over the whole repository."""

from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_lint_passes():
    result = ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_ruff_format_is_applied():
    result = ruff("format", "--no-cache", "--check", ".")
    assert result.returncode == 0, (
        "run `ruff format .`:\n" + result.stdout[-5000:] + result.stderr[-2000:]
    )
