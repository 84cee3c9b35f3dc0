"""Keras' own features work on a Mixer as on any keras.applications model: quantize, LoRA,
freezing across save/load, argument checking, input_tensor, keras.saving.load_model."""

import inspect

import numpy as np
import pytest
from helpers.tiny import TESTS_DATA, TINY, tiny_images

import keras
import keras_mixer
from keras_mixer import MlpMixer


def tiny(**kwargs):
    kwargs.setdefault("input_shape", (32, 32, 3))
    return MlpMixer(**TINY, **kwargs)


def separable_data(n=48, seed=0):
    """Images whose class (of 3) is the brightest colour channel: learnt in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.uniform(0, 120, (n, 32, 32, 3))
    images[np.arange(n), :, :, labels] += 120
    return images.astype("float32"), labels


@pytest.fixture(scope="module")
def trained():
    """A tiny Mixer trained to tell the three classes apart, and its data."""
    keras.utils.set_random_seed(0)
    model = tiny(num_classes=3)
    images, labels = separable_data()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images, labels, epochs=6, batch_size=16, verbose=0)
    return model, images, labels


def mlp_dense_layers(model):
    return [dense for block in model.blocks for mlp in (block.token_mixing, block.channel_mixing)
            for dense in (mlp.dense_0, mlp.dense_1)]


@pytest.mark.parametrize("mode, agreement", [("int8", 0.97), ("float8", 0.97), ("int4", 0.85)])
def test_quantize_reaches_every_mlp_matrix_and_keeps_the_answers(trained, mode, agreement, tmp_path):
    model, images, _ = trained
    expected = model.predict(images, verbose=0)
    assert np.mean(expected.argmax(-1) == separable_data()[1]) > 0.9  # the model did learn
    quantized = MlpMixer.from_config(model.get_config())
    quantized.set_weights(model.get_weights())
    quantized.quantize(mode)
    layers = mlp_dense_layers(quantized) + [quantized.head]
    assert [layer.quantization_mode for layer in layers] == [mode] * (4 * TINY["num_blocks"] + 1)
    got = quantized.predict(images, verbose=0)
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= agreement
    path = str(tmp_path / f"{mode}.keras")
    quantized.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config()["quantized_layers"] == quantized.get_config()["quantized_layers"]
    np.testing.assert_allclose(loaded.predict(images, verbose=0), got, rtol=0, atol=1e-6)


def test_token_calibrated_quantization_is_refused_clearly():
    config = keras.quantizers.GPTQConfig(dataset=["calibration text"], tokenizer=object())
    with pytest.raises(ValueError, match="token sequences"):
        tiny().quantize("gptq", config=config)


def test_lora_fine_tunes_a_frozen_model_and_survives_save_load(trained, tmp_path):
    model, images, labels = trained
    tuned = MlpMixer.from_config(model.get_config())
    tuned.set_weights(model.get_weights())
    tuned.enable_lora(rank=2)
    lora = {w.path for w in tuned.trainable_weights if "lora_kernel" in w.path}
    assert len(lora) == 2 * 4 * TINY["num_blocks"]  # every MLP matrix gets its two factors
    frozen = {w.path: keras.ops.convert_to_numpy(w).copy() for w in tuned.weights
              if w.path.endswith("/kernel") and "/head/" not in f"/{w.path}"}
    tuned.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    before = tuned.evaluate(images, (labels + 1) % 3, verbose=0)  # a new task: shifted labels
    tuned.fit(images, (labels + 1) % 3, epochs=3, batch_size=16, verbose=0)
    assert tuned.evaluate(images, (labels + 1) % 3, verbose=0) < before
    for variable in tuned.weights:
        if variable.path in frozen:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), frozen[variable.path])
    path = str(tmp_path / "lora.keras")
    tuned.save(path)
    loaded = keras.saving.load_model(path)
    assert {w.path for w in loaded.trainable_weights if "lora_kernel" in w.path} == lora
    np.testing.assert_allclose(loaded.predict(images, verbose=0), tuned.predict(images, verbose=0),
                               rtol=0, atol=1e-6)


def test_a_frozen_backbone_stays_frozen_after_save_and_load(tmp_path):
    base = tiny(include_top=False, pooling="avg")
    base.trainable = False
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(base(inputs)))
    assert len(model.trainable_weights) == 2
    path = str(tmp_path / "frozen_base.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert len(loaded.trainable_weights) == 2
    backbone = [layer for layer in loaded.layers if isinstance(layer, MlpMixer)][0]
    before = [keras.ops.convert_to_numpy(w).copy() for w in backbone.weights]
    images, labels = separable_data(16)
    loaded.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    for want, variable in zip(before, backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), want)


def test_a_frozen_block_or_sublayer_stays_frozen_after_save_and_load(tmp_path):
    model = tiny(num_classes=3)
    model.get_layer("mixer_block_1").trainable = False
    model.layer_at("mixer_block_0/token_mixing/dense_1").trainable = False
    expected = len(model.trainable_weights)
    assert expected == len(model.weights) - 12 - 2  # a block holds 12 weights, a Dense 2
    path = str(tmp_path / "frozen_block.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert sorted(loaded.get_config()["frozen_layers"]) == [
        "mixer_block_0/token_mixing/dense_1", "mixer_block_1"]
    assert len(loaded.trainable_weights) == expected
    assert not loaded.layer_at("mixer_block_0/token_mixing/dense_1").trainable


@pytest.mark.parametrize("kwargs", [dict(classes=10), dict(input_shap=(64, 64, 3)),
                                    dict(input_shape=(64, 64, 3), num_class=3)])
def test_unknown_arguments_raise_type_error(kwargs):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        keras_mixer.MixerS32(**kwargs)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        tiny(**kwargs)


def test_variant_functions_have_real_signatures_and_documented_arguments():
    signature = inspect.signature(keras_mixer.MixerB16)
    assert list(signature.parameters)[:8] == [
        "include_top", "weights", "input_tensor", "input_shape", "pooling", "num_classes",
        "classifier_activation", "include_preprocessing"]
    assert signature.parameters["name"].default == "mixer_b16"
    doc = keras_mixer.MixerB16.__doc__
    for name in signature.parameters:
        assert f"        {name}: " in doc, name
    assert "Example" in doc and "59,880,472" in doc
    model = keras_mixer.MixerS32(False, None, None, (64, 64, 3))  # positionally, as keras.applications
    assert not model.config.include_top and model.config.image_size == (64, 64)


def test_input_tensor_connects_like_keras_applications():
    inputs = keras.Input((32, 32, 3))
    flipped = keras.layers.RandomFlip(seed=0)(inputs)
    base = tiny(include_top=False, pooling="avg", input_tensor=flipped)
    model = keras.Model(inputs, keras.layers.Dense(3)(base.output))
    images = tiny_images(2)
    assert base.inputs[0] is inputs
    assert model.predict(images, verbose=0).shape == (2, 3)
    # At inference RandomFlip passes images through: the base computes a plain Mixer's features.
    plain = tiny(include_top=False, pooling="avg")
    plain.set_weights(base.get_weights())
    np.testing.assert_allclose(base.predict(images, verbose=0), plain.predict(images, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_keras_load_model_reads_our_files_after_import(tmp_path):
    model = tiny(num_classes=4, drop_path_rate=0.1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MlpMixer) and loaded.config == model.config
    model.blocks[0].trainable = False  # the layers' state is not part of the config
    model.save(path)
    assert keras_mixer.models.keras_file_config(path) == model.config  # read, not built
    np.testing.assert_array_equal(loaded.predict(tiny_images(2), verbose=0),
                                  model.predict(tiny_images(2), verbose=0))


@pytest.mark.parametrize("name", ["mixer_v0_2_0_tiny.keras", "mixer_v0_2_0_tiny.weights.h5"])
def test_files_of_release_0_2_load_with_their_answers(name):
    # 0.2 kept each MLP's weights in the MlpBlock itself; they load into today's Dense layers.
    expected = np.load(f"{TESTS_DATA}/mixer_v0_2_0_tiny_expected.npz")
    path = f"{TESTS_DATA}/{name}"
    model = (keras_mixer.load_model(path) if name.endswith(".keras") else
             tiny(num_classes=10, weights=path))
    np.testing.assert_allclose(model.predict(expected["images"], verbose=0),
                               expected["probabilities"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["mixer_v0_1_0_tiny.keras", "mixer_v0_1_0_headless.keras",
                                  "mixer_v0_2_0_tiny.keras"])
def test_config_of_older_files_is_read_as_loading_builds_it(name):
    path = f"{TESTS_DATA}/{name}"
    assert keras_mixer.models.keras_file_config(path) == keras_mixer.load_model(path).config

