"""bfloat16 through Keras' dtype policies: which layers compute in bf16, and how far the outputs move."""

import numpy as np
import pytest
from helpers.tiny import TINY, tiny_classifier, tiny_images

import keras
import keras_mixer
from keras_mixer import models
from keras_mixer.benchmark.precision import precision_drift
from keras_mixer.config import MixerConfig


def _policies(model):
    return {layer.name: layer.dtype_policy.name for layer in model.layers}


@pytest.mark.parametrize("how", ["argument", "global policy"])
def test_bfloat16_policy_reaches_every_layer_but_the_outputs(how):
    if how == "argument":
        model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10,
                                     dtype="bfloat16")
    else:
        keras.config.set_dtype_policy("bfloat16")
        model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10)
        keras.config.set_dtype_policy("float32")
    policies = _policies(model)
    assert policies.pop("predictions") == "float32"  # probabilities stay float32
    assert set(policies.values()) == {"bfloat16"}, policies
    assert model.dtype_policy.name == "bfloat16"
    assert keras.backend.standardize_dtype(model.blocks[0].token_mixing.dense_0.kernel.dtype) == "bfloat16"
    out = model.predict(tiny_images(2), verbose=0)
    assert keras.backend.standardize_dtype(out.dtype) == "float32" and np.all(np.isfinite(out))


def test_bfloat16_model_saves_and_loads_as_bfloat16(tmp_path):
    model = models.with_dtype(tiny_classifier(), "bfloat16")
    path = str(tmp_path / "bf16.keras")
    models.save_keras_file(model, path)
    loaded = models.load_keras_file(path)
    assert loaded.dtype_policy.name == "bfloat16"
    assert set(_policies(loaded).values()) == {"bfloat16", "float32"}
    images = tiny_images(3)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_with_dtype_keeps_the_weights():
    model = tiny_classifier()
    copy = models.with_dtype(model, "bfloat16")
    assert models.with_dtype(model, "float32") is model
    for original, cast in zip(model.weights, copy.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(cast, "float32")),
                                   keras.ops.convert_to_numpy(original), rtol=1 / 128)


def test_drift_numbers():
    expected = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    actual = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]])
    drift = models.drift(expected, actual)
    assert drift["top1_agreement"] == 0.5 and drift["max_abs_error"] == 3.0
    assert drift["relative_error"] == pytest.approx(np.sqrt(18 / 15))
    with pytest.raises(ValueError, match="same"):
        models.drift(expected, actual[:1])


def test_bfloat16_drift_is_small_but_real():
    """bf16 moves the logits by about 1% (random tiny Mixer, noise images): more than float32
    round-off (so bf16 really runs), less than a broken cast or a bf16 LayerNorm would."""
    drift = precision_drift(MixerConfig(**TINY), image_size=32, num_classes=10, num_images=16)
    assert drift["dtype"] == "bfloat16" and drift["num_images"] == 16
    assert 1e-3 < drift["relative_error"] < 0.05, drift
    assert drift["top1_agreement"] >= 0.8, drift


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="exports in this process under TensorFlow (other backends use a subprocess)")
def test_saved_model_rates_time_each_dtype(tmp_path, monkeypatch):
    from keras_mixer.benchmark import gemm
    from keras_mixer.benchmark.precision import saved_model_rates

    monkeypatch.setattr(gemm, "SQUARE_GEMM", 64)  # 2048 is for real models

    report = saved_model_rates(MixerConfig(**TINY), image_size=32, batch_size=2, repeats=1,
                               log=lambda message: None)
    assert [row["dtype"] for row in report["rows"]] == ["float32", "bfloat16"]
    assert all(row["img_per_s"] > 0 and row["fraction_of_bf16_matmul"] > 0 for row in report["rows"])
