"""Core model behaviour: shapes, parameter counts, errors, serialization, training."""

import os
import numpy as np
import pytest
from helpers.tiny import TESTS_DATA, TINY, tiny_images

import keras
import keras_mixer
from keras_mixer import MlpMixer

# Paper Table 1 architectures, counted at 224x224 with a 1000-class head.
PARAM_COUNTS = {
    "S/32": 19_104_624,
    "S/16": 18_528_264,
    "B/32": 60_293_428,
    "B/16": 59_880_472,
    "L/32": 206_939_264,
    "L/16": 208_196_168,
    "H/14": 432_350_952,
}
CONSTRUCTORS = {
    "S/32": keras_mixer.MixerS32, "S/16": keras_mixer.MixerS16,
    "B/32": keras_mixer.MixerB32, "B/16": keras_mixer.MixerB16,
    "L/32": keras_mixer.MixerL32, "L/16": keras_mixer.MixerL16,
    "H/14": keras_mixer.MixerH14,
}


def tiny(**kwargs):
    kwargs.setdefault("input_shape", (32, 32, 3))
    return MlpMixer(**TINY, **kwargs)


@pytest.mark.parametrize("variant", list(PARAM_COUNTS))
def test_parameter_counts_of_paper_variants(variant):
    # From the sizes alone (building H/14 takes half a minute); a built model agrees below.
    assert keras_mixer.parameter_count(variant) == PARAM_COUNTS[variant]


def test_parameter_count_equals_a_built_models():
    model = keras_mixer.MixerS32()
    assert model.count_params() == keras_mixer.parameter_count(model.config) == PARAM_COUNTS["S/32"]
    assert model.name == "mixer_s32"
    assert model.output.shape == (None, 1000)
    small = tiny(input_shape=(24, 40, 1), num_classes=3, include_top=True)
    assert small.count_params() == keras_mixer.parameter_count(small.config)
    headless = tiny(include_top=False, pooling="avg")
    assert headless.count_params() == keras_mixer.parameter_count(headless.config)


def test_get_model_accepts_variant_spellings():
    for spelling in ("S/32", "s32", "Mixer-S/32", "Mixer-S_32"):
        assert keras_mixer.canonical_variant(spelling) == "S/32"
    model = keras_mixer.get_model("s32", input_shape=(64, 64, 3), num_classes=3)
    assert model.name == "mixer_s32"
    assert model.output.shape == (None, 3)


def test_top_model_shapes():
    model = tiny(num_classes=7)
    out = model.predict(tiny_images(), verbose=0)
    assert out.shape == (4, 7)
    # Zero-initialised head: uniform softmax.
    np.testing.assert_allclose(out, 1 / 7, rtol=1e-6)


@pytest.mark.parametrize(
    "pooling, shape", [(None, (4, 16, 32)), ("avg", (4, 32)), ("max", (4, 32))]
)
def test_headless_shapes(pooling, shape):
    model = tiny(include_top=False, pooling=pooling)
    assert model.predict(tiny_images(), verbose=0).shape == shape


def test_non_square_images_and_custom_channels():
    model = tiny(input_shape=(24, 40, 1), num_classes=2)
    assert model.get_layer("stem").output.shape == (None, 15, 32)
    assert model.predict(np.zeros((2, 24, 40, 1), "float32"), verbose=0).shape == (2, 2)


def test_input_tensor():
    inputs = keras.Input((32, 32, 3))
    model = tiny(input_tensor=inputs, num_classes=3)
    assert model.input is inputs


def test_include_preprocessing_maps_pixels_to_unit_range():
    with_pre = tiny(include_top=False, pooling="avg")
    without = tiny(include_top=False, pooling="avg", include_preprocessing=False)
    without.set_weights(with_pre.get_weights())
    images = tiny_images()
    np.testing.assert_allclose(
        with_pre.predict(images, verbose=0),
        without.predict(images / 127.5 - 1, verbose=0),
        rtol=1e-5, atol=1e-5,
    )
    # uint8 pixels are accepted as they are.
    uint8 = images.astype("uint8")
    np.testing.assert_allclose(
        with_pre.predict(uint8, verbose=0),
        with_pre.predict(uint8.astype("float32"), verbose=0), rtol=1e-6, atol=1e-6,
    )


def test_feature_extractor_returns_every_block():
    model = tiny()
    extractor = keras_mixer.feature_extractor(model)
    features = extractor.predict(tiny_images(), verbose=0)
    assert len(features) == TINY["num_blocks"]
    assert all(f.shape == (4, 16, 32) for f in features)
    grid = keras_mixer.feature_extractor(model, blocks=[-1], as_grid=True)
    last = grid.predict(tiny_images(), verbose=0)
    last = last[0] if isinstance(last, list) else last
    assert last.shape == (4, 4, 4, 32)
    np.testing.assert_allclose(last.reshape(4, 16, 32), features[-1], rtol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        keras_mixer.feature_extractor(model, blocks=[5])


def test_drop_path_rate_rises_linearly_and_only_acts_in_training():
    model = MlpMixer(**{**TINY, "num_blocks": 5}, input_shape=(32, 32, 3), drop_path_rate=0.4)
    rates = [block.drop_path_rate for block in keras_mixer.mixer_blocks(model)]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.4])
    images = tiny_images()
    features = keras_mixer.feature_extractor(model, blocks=[-1])
    a = keras.ops.convert_to_numpy(features(images, training=False))
    b = keras.ops.convert_to_numpy(features(images, training=False))
    np.testing.assert_array_equal(a, b)
    c = keras.ops.convert_to_numpy(features(images, training=True))
    assert not np.allclose(a, c)


def test_drop_path_drops_whole_samples_and_keeps_expectation():
    layer = keras_mixer.DropPath(0.5, seed=1)
    x = np.ones((2000, 3, 4), "float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(2000, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert abs(y.mean() - 1.0) < 0.1


def test_keras_save_load_round_trip(tmp_path):
    model = tiny(num_classes=5, drop_path_rate=0.1)
    model.set_weights([np.random.default_rng(i).standard_normal(w.shape).astype("float32")
                       for i, w in enumerate(model.get_weights())])
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = tiny_images()
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-6, atol=1e-7)
    assert loaded.get_layer("mixer_block_1").drop_path_rate == pytest.approx(0.1)


def test_json_and_from_config_round_trip():
    model = tiny(num_classes=5, approximate_gelu=False)
    clone = keras.models.model_from_json(model.to_json())
    assert clone.count_params() == model.count_params()
    assert clone.get_layer("mixer_block_0").token_mixing.approximate_gelu is False
    clone = keras_mixer.MlpMixer.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    images = tiny_images()
    np.testing.assert_allclose(clone.predict(images, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(num_classes=5, approximate_gelu=False, dropout=0.1, drop_path_rate=0.2, crop_fraction=0.875),
    dict(include_top=False, pooling="max", include_preprocessing=False, layer_norm_epsilon=1e-5),
    dict(input_shape=(32, 64, 3), classifier_activation=None, name="wide"),
])
def test_model_owns_its_config(kwargs, tmp_path):
    """get_config() holds every constructor argument; from_config and .keras files round-trip it."""
    model = keras_mixer.MlpMixer(**TINY, **kwargs)
    config = model.config
    for key, value in kwargs.items():
        assert getattr(config, "image_shape" if key == "input_shape" else key) == value, key
    assert keras_mixer.ModelConfig.from_kwargs(**{k: v for k, v in model.get_config().items()
                                                  if k != "trainable"}) == config
    assert keras_mixer.MlpMixer.from_config(model.get_config()).config == config
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, keras_mixer.MlpMixer) and loaded.config == config
    assert loaded.blocks[0] is loaded.get_layer("mixer_block_0")
    assert keras_mixer.flops(config) == keras_mixer.flops(config.architecture, config.image_size,
                                                          config.num_classes if config.include_top else 0)


@pytest.mark.parametrize("name", ["mixer_v0_1_0_tiny.keras", "mixer_v0_1_0_headless.keras"])
def test_keras_files_of_release_0_1_load_and_convert(name):
    """Files written by keras-mixer 0.1 (plain functional models) load as MlpMixer, same outputs
    (recorded by 0.1/0.2 beside each file)."""
    path = os.path.join(TESTS_DATA, name)
    model = keras_mixer.load_model(path)
    assert isinstance(model, keras_mixer.MlpMixer)
    with np.load(path.replace(".keras", "_expected.npz")) as expected:
        want = expected["probabilities" if "probabilities" in expected else "features"]
        np.testing.assert_allclose(model.predict(expected["images"], verbose=0), want,
                                   rtol=1e-5, atol=1e-5 * np.abs(want).max())
    if name == "mixer_v0_1_0_tiny.keras":
        assert model.config == keras_mixer.ModelConfig(**TINY, image_shape=(32, 32, 3),
                                                       num_classes=10, name="legacy_tiny")
    else:
        assert (model.config.include_top, model.config.pooling,
                model.config.include_preprocessing) == (False, "avg", False)


def test_layers_get_config_round_trip():
    for layer in (
        keras_mixer.PatchEmbedding(8, 32),
        keras_mixer.MlpBlock(16, axis=1, approximate_gelu=False),
        keras_mixer.MixerBlock(16, 64, drop_path_rate=0.2, layer_norm_epsilon=1e-5),
        keras_mixer.DropPath(0.3, seed=4),
    ):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_fit_step_lowers_loss():
    keras.utils.set_random_seed(0)
    model = tiny(num_classes=4, classifier_activation=None)
    images = tiny_images(16)
    labels = np.arange(16) % 4
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(images, labels, verbose=0)
    model.fit(images, labels, epochs=3, batch_size=16, verbose=0)
    assert model.evaluate(images, labels, verbose=0) < before


def test_mixed_bfloat16_policy_trains():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny(num_classes=4, drop_path_rate=0.1, dropout=0.1)
    assert model.get_layer("mixer_block_0").compute_dtype == "bfloat16"
    assert model.get_layer("mixer_block_0").token_mixing.dense_0.kernel.dtype == "float32"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(tiny_images(8), np.arange(8) % 4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    out = model.predict(tiny_images(2), verbose=0)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_shape=(30, 32, 3)), "not divisible by the patch size"),
        (dict(input_shape=(32, 32)), "must be 3D"),
        (dict(input_shape=(None, 32, 3)), "fixed image height and width"),
        (dict(num_classes=0), "num_classes >= 1"),
        (dict(pooling="mean", include_top=False), "pooling must be"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(dropout=-0.1), "dropout"),
        (dict(weights="model.bin"), "Unsupported weights"),
        (dict(weights="missing.weights.h5"), "not found"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        tiny(**kwargs)


def test_bad_architecture_and_variant_errors():
    with pytest.raises(ValueError, match="Unknown Mixer variant 'X/99'.*B/16"):
        keras_mixer.get_model("X/99")
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        MlpMixer(0, 2, 32, 16, 64)
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        MlpMixer(8, 2.5, 32, 16, 64)
    with pytest.raises(ValueError, match="DropPath|Drop-path rate"):
        keras_mixer.DropPath(1.5)
    with pytest.raises(ValueError, match="axis 1 .*tokens"):
        keras_mixer.MlpBlock(8, axis=0)


def test_wrong_input_rank_at_call_time():
    model = tiny()
    with pytest.raises(ValueError):
        model.predict(np.zeros((2, 32, 32), "float32"), verbose=0)


def test_weights_file_round_trip(tmp_path):
    model = tiny(num_classes=3)
    model.set_weights([w + 0.5 for w in model.get_weights()])
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    clone = tiny(num_classes=3, weights=path)
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
