"""Shared test setup: quiet TensorFlow, deterministic Keras, temp logdirs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture
def keras():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1234)
    yield tf.keras
    tf.keras.mixed_precision.set_global_policy("float32")
    tf.keras.backend.clear_session()
