"""Fixtures shared by the tests; shared code lives in tests/helpers, worker processes in tests/workers."""

import os
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `helpers` and `workers` import as packages
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from helpers.tiny import LABELS, tiny_classifier  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Mark every test of a module that sets ``BACKEND_INDEPENDENT = True`` as
    ``backend_independent`` (except those marked ``every_backend``): scripts/test.sh runs
    those under one backend only."""
    for item in items:
        if (getattr(item.module, "BACKEND_INDEPENDENT", False)
                and item.get_closest_marker("every_backend") is None):
            item.add_marker(pytest.mark.backend_independent)


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


@pytest.fixture
def fused_traces(monkeypatch):
    """The ``approximate`` flag of each bias + GELU traced as an XLA function, in order
    (TensorFlow's fast path, :mod:`keras_mixer.fast.tensorflow`: training and ``fast.inference``)."""
    from keras_mixer.fast import tensorflow as tensorflow_paths

    traced = []
    xla_bias_gelu = tensorflow_paths._xla_bias_gelu

    def counting(approximate):
        traced.append(approximate)
        return xla_bias_gelu(approximate)

    monkeypatch.setattr(tensorflow_paths, "_xla_bias_gelu", counting)
    return traced


@pytest.fixture(scope="session")
def exported_mixer(tmp_path_factory):
    """A tiny Mixer trained one step on this backend, saved as .keras, exported (with labels) as version 1."""
    from keras_mixer import deploy

    root = tmp_path_factory.mktemp("export")
    model = tiny_classifier()
    images = np.random.default_rng(2).integers(0, 256, (24, 32, 32, 3)).astype("uint8")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[:8].astype("float32"), np.arange(8), batch_size=8, verbose=0)  # "trained" here
    keras_path = str(root / "tiny.keras")
    model.save(keras_path)
    expected = np.asarray(model.predict(images.astype("float32"), verbose=0))
    version_dir = deploy.export_saved_model(keras_path, str(root / "models"), name="mixer",
                                            labels=LABELS)
    return types.SimpleNamespace(keras_path=keras_path, export_dir=str(root / "models"),
                                 version_dir=version_dir, images=images, expected=expected,
                                 labels=LABELS)
