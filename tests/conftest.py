import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

# A tiny Mixer for behaviour tests: 32x32 images, patch 8 (16 tokens), width 32.
TINY = dict(patch_size=8, num_blocks=2, hidden_dim=32, tokens_mlp_dim=16, channels_mlp_dim=64)


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()


@pytest.fixture
def backend():
    return keras.backend.backend()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def tiny_images(n=4, size=32, seed=0):
    """uint8-range float images."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")
