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


# --- export and serving (issue 5): one tiny Mixer, saved and exported once per session.
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_classifier(seed=1, **kwargs):
    """The tiny Mixer with a random (not zero) head, so its predictions differ between classes."""
    import keras_mixer

    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10, **kwargs)
    rng = np.random.default_rng(seed)
    head = model.get_layer("head")
    head.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in head.get_weights()])
    return model


@pytest.fixture(scope="session")
def exported_mixer(tmp_path_factory):
    """A tiny Mixer trained one step on this backend, saved as .keras, exported (with labels) as version 1."""
    import types

    from keras_mixer.export import export_saved_model

    root = tmp_path_factory.mktemp("export")
    model = tiny_classifier()
    images = np.random.default_rng(2).integers(0, 256, (24, 32, 32, 3)).astype("uint8")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[:8].astype("float32"), np.arange(8), batch_size=8, verbose=0)  # "trained" here
    keras_path = str(root / "tiny.keras")
    model.save(keras_path)
    expected = np.asarray(model.predict(images.astype("float32"), verbose=0))
    version_dir = export_saved_model(keras_path, str(root / "models"), name="mixer", labels=LABELS)
    return types.SimpleNamespace(keras_path=keras_path, export_dir=str(root / "models"),
                                 version_dir=version_dir, images=images, expected=expected,
                                 labels=LABELS)
