"""Numeric parity with an independent NumPy implementation of the official forward pass."""

import numpy as np
import pytest
from helpers import reference

import keras
from keras_mixer import MlpMixer

RTOL = 1e-5


@pytest.mark.parametrize(
    "config",
    [
        # tiny square config
        dict(size=(32, 32), patch=8, hidden=32, tokens_mlp=16, channels_mlp=64, depth=2),
        # non-square grid, S != D_S, D_S > S, odd widths
        dict(size=(24, 40), patch=8, hidden=24, tokens_mlp=37, channels_mlp=50, depth=3),
        # patch 4, more tokens than mixing units
        dict(size=(20, 28), patch=4, hidden=16, tokens_mlp=9, channels_mlp=40, depth=2),
    ],
)
def test_forward_matches_numpy_reference(config):
    height, width = config["size"]
    patch = config["patch"]
    tokens = (height // patch) * (width // patch)
    params = reference.random_params(patch, 3, config["hidden"], tokens, config["tokens_mlp"],
                                     config["channels_mlp"], config["depth"], num_classes=11)
    model = MlpMixer(patch, config["depth"], config["hidden"], config["tokens_mlp"],
                     config["channels_mlp"], input_shape=(height, width, 3), num_classes=11,
                     classifier_activation=None, include_preprocessing=False)
    reference.assign_official(model, params)
    images = np.random.default_rng(1).uniform(-1, 1, (3, height, width, 3)).astype("float32")
    expected = reference.forward(params, images)
    actual = model.predict(images, verbose=0)
    assert reference.rel_error(actual, expected) <= RTOL


def test_preprocessing_and_pre_logits_match_reference():
    params = reference.random_params(8, 3, 32, 16, 16, 64, 2, num_classes=5)
    model = MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3), include_top=False, pooling="avg")
    reference.assign_official(model, params)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    expected = reference.forward(params, pixels / 127.5 - 1, pre_logits=True)
    assert reference.rel_error(model.predict(pixels, verbose=0), expected) <= RTOL


def test_exact_gelu_is_a_different_function():
    """Guards the GELU choice: the official tanh GELU is what the reference computes."""
    params = reference.random_params(8, 3, 32, 16, 16, 64, 2, num_classes=5)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    expected = reference.forward(params, images)
    model = MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3), num_classes=5,
                     classifier_activation=None, include_preprocessing=False,
                     approximate_gelu=False)
    reference.assign_official(model, params)
    assert reference.rel_error(model.predict(images, verbose=0), expected) > 1e-5


def test_layer_norm_epsilon_is_the_papers():
    model = MlpMixer(8, 1, 32, 16, 64, input_shape=(32, 32, 3))
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.LayerNormalization)]
    assert norms and all(norm.epsilon == 1e-6 for norm in norms)
