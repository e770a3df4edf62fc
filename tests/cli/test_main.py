"""The ``tb-bn`` entry point as a user runs it: quiet consoles, usage errors, help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tb_bn_plugin.cli import main


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    tb_bn = shutil.which("tb-bn")
    command = [tb_bn] if tb_bn else [sys.executable, "-m", "tb_bn_plugin.cli"]
    # A user's environment: TensorFlow's logging variables unset.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    return subprocess.run(
        [*command, *argv],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=300,
    )


def test_report_prints_nothing_but_the_report(tmp_path):
    """TensorFlow's C++ start-up lines (oneDNN, CUDA probing) never reach the user's console."""
    import numpy as np
    import tensorflow as tf

    from tb_bn_plugin import BatchNormCallback

    keras = tf.keras
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[BatchNormCallback(str(tmp_path))])

    result = run_cli("report", str(tmp_path), "--fail-on", "never")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"BatchNorm report for {tmp_path}")


def test_usage_error_is_one_line():
    result = run_cli("report", "/nonexistent/logdir")
    assert result.returncode == 2
    assert result.stderr == "tb-bn: error: log directory '/nonexistent/logdir' does not exist\n"


def test_help_does_not_load_tensorflow():
    probe = "import sys, tb_bn_plugin.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "report" in capsys.readouterr().err


def test_failed_tensorflow_import_is_not_hidden(tmp_path):
    """The quiet import replays what TensorFlow printed when the import itself fails."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\nos.write(2, b'native loader says why\\n')\n"
        "raise ImportError('broken tensorflow')\n"
    )
    result = run_cli(
        "report",
        str(tmp_path),
        PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    assert result.returncode != 0
    assert "native loader says why" in result.stderr and "broken tensorflow" in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["graph", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
