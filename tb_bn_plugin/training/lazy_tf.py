"""``tf``: TensorFlow, imported on first attribute access.

The training modules serve TensorFlow models (capture variables, ``tf.function``
probe passes) and Keras 3 on JAX or PyTorch, where TensorFlow may not be
installed. They refer to ``tf`` through this proxy, so importing them (and
``BatchNormCallback``) does not import TensorFlow; only code that runs for a
TensorFlow model does.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


tf: Any = _LazyModule("tensorflow")
