"""Shared by the real-run tests: the demo's scenarios (demo/train.py) at test size, run once."""

from __future__ import annotations

import importlib.util
import os
import sys

DEMO_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "train.py"
)

_runs: dict[str, str] = {}


def demo():
    """The demo module (loaded from its file; demo/ is not a package)."""
    name = "tb_bn_demo_train"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DEMO_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def scenario_run(tmp_path_factory, name: str) -> str:
    """The run directory of scenario ``name`` trained at ``TEST`` size (once per test session)."""
    if name not in _runs:
        logdir = str(tmp_path_factory.mktemp("demo_" + name.replace("-", "_")))
        _runs[name] = demo().run_scenario(name, logdir, verbose=0, size=demo().TEST)
    return _runs[name]
