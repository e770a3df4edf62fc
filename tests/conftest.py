"""Shared test setup: quiet TensorFlow, deterministic Keras, temp logdirs."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Shared helpers (demo_runs, _plugin_logdir) live here, beside the per-layer test folders.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture
def keras():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1234)
    yield tf.keras
    tf.keras.mixed_precision.set_global_policy("float32")
    tf.keras.backend.clear_session()
