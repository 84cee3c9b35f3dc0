"""Resolution transfer (paper Appendix C): block-diagonal token mixing on a K-times larger grid."""

import keras
import numpy as np
import pytest
from helpers import reference

import keras_mixer
from keras_mixer import MlpMixer, checkpoints
from keras_mixer.checkpoints import tiling

RTOL = 1e-5
PATCH, SIZE = 8, 32  # 4x4 tokens

def run(model, inputs):
    """Inference outputs as NumPy (a direct call: no per-shape compilation as in predict)."""
    return keras.ops.convert_to_numpy(model(inputs, training=False))



def trained_model(**kwargs):
    """A tiny Mixer with random non-trivial weights in every variable."""
    kwargs.setdefault("classifier_activation", None)
    kwargs.setdefault("include_preprocessing", False)
    model = MlpMixer(PATCH, 2, 32, 12, 64, input_shape=(SIZE, SIZE, 3), num_classes=5, **kwargs)
    checkpoints.load_params(model, reference.random_params(PATCH, 3, 32, 16, 12, 64, 2, num_classes=5))
    return model


def tile(sub_images, kh, kw):
    """(kh*kw, n, h, w, c) sub-images -> (n, kh*h, kw*w, c) images, tile g at row g // kw, column g % kw."""
    rows = [np.concatenate(list(sub_images[r * kw:(r + 1) * kw]), axis=2) for r in range(kh)]
    return np.concatenate(rows, axis=1)


def tile_tokens(grid, kh, kw):
    """Row-major indices (in the big grid) of the tokens of each tile, in the tile's own row-major order."""
    h, w = grid
    big = np.arange(kh * h * kw * w).reshape(kh * h, kw * w)
    return [big[r * h:(r + 1) * h, c * w:(c + 1) * w].reshape(-1) for r in range(kh) for c in range(kw)]


@pytest.mark.parametrize("factors", [(2, 2), (1, 2)])
def test_each_block_mixes_each_tile_like_the_original(factors):
    """Per block: the converted token-mixing MLP (and whole block) on a tiled input
    equals the original on each tile."""
    kh, kw = factors
    small = trained_model()
    big = keras_mixer.convert_resolution(small, (kh * SIZE, kw * SIZE))
    groups = tile_tokens((SIZE // PATCH, SIZE // PATCH), kh, kw)
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((2, kh * kw * 16, 32)).astype("float32")
    for small_block, big_block in zip(keras_mixer.mixer_blocks(small), keras_mixer.mixer_blocks(big)):
        assert big_block.token_mixing.dense_0.kernel.shape == (kh * kw * 16, kh * kw * 12)
        for layer in ("token_mixing", None):
            small_fn = getattr(small_block, layer) if layer else small_block
            big_fn = getattr(big_block, layer) if layer else big_block
            out = keras.ops.convert_to_numpy(big_fn(tokens))
            for index in groups:
                expected = keras.ops.convert_to_numpy(small_fn(tokens[:, index]))
                assert reference.rel_error(out[:, index], expected) <= RTOL


@pytest.mark.parametrize("factors", [(2, 2), (2, 3)])
def test_converted_model_on_tiled_image(factors):
    """Image of K x K independent sub-images: tokens of each tile equal the original
    model's tokens on that sub-image, and the logits are the mean of the sub-images' logits."""
    kh, kw = factors
    small = trained_model()
    big = keras_mixer.convert_resolution(small, (kh * SIZE, kw * SIZE))
    subs = np.random.default_rng(4).uniform(-1, 1, (kh * kw, 2, SIZE, SIZE, 3)).astype("float32")
    image = tile(subs, kh, kw)
    sub_logits = np.stack([run(small, s) for s in subs])
    assert reference.rel_error(run(big, image), sub_logits.mean(0)) <= RTOL

    small_tokens = keras_mixer.feature_extractor(small, blocks=[-1])
    big_tokens = keras_mixer.feature_extractor(big, blocks=[-1])
    out = run(big_tokens, image)
    for g, index in enumerate(tile_tokens((SIZE // PATCH, SIZE // PATCH), kh, kw)):
        expected = run(small_tokens, subs[g])
        assert reference.rel_error(out[:, index], expected) <= RTOL


def test_convert_keeps_everything_else():
    small = trained_model(drop_path_rate=0.1, dropout=0.2, include_preprocessing=True)
    big = keras_mixer.convert_resolution(small, 64, name="big")
    small_config = small.config.to_kwargs()
    big_config = big.config.to_kwargs()
    assert big_config.pop("input_shape") == (64, 64, 3) and big_config.pop("name") == "big"
    assert big_config.pop("tokens_mlp_dim") == 4 * small_config.pop("tokens_mlp_dim")
    small_config.pop("input_shape"), small_config.pop("name")
    assert big_config == small_config
    small_params, big_params = checkpoints.get_params(small), checkpoints.get_params(big)
    for key, value in small_params.items():
        if "/token_mixing/" not in key:
            np.testing.assert_array_equal(big_params[key], value, err_msg=key)


def test_non_integer_factor_is_a_clear_error():
    small = trained_model()
    with pytest.raises(ValueError, match=r"4x4 token grid to a 6x6 grid: factors 1.5 x 1.5 "
                                         r"are not integers.*patch size"):
        keras_mixer.convert_resolution(small, 48)


def test_loading_a_checkpoint_into_a_larger_model(tmp_path):
    """weights= with a K-times larger input and K^2 D_S: block-diagonal init from the file."""
    small = trained_model()
    path = checkpoints.save_weights(small, tmp_path / "small.npz")
    expected = keras_mixer.convert_resolution(small, 64)
    with pytest.warns(UserWarning, match="Resolution transfer: 4x4 -> 8x8 tokens"):
        big = MlpMixer(PATCH, 2, 32, 48, 64, input_shape=(64, 64, 3), num_classes=5,
                       classifier_activation=None, include_preprocessing=False, weights=path)
    actual = checkpoints.get_params(big)
    for key, value in checkpoints.get_params(expected).items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_loading_into_larger_model_with_original_mlp_width_explains(tmp_path):
    path = checkpoints.save_weights(trained_model(), tmp_path / "small.npz")
    model = MlpMixer(PATCH, 2, 32, 12, 64, input_shape=(64, 64, 3), num_classes=5)
    with pytest.raises(ValueError, match=r"tokens_mlp_dim = 4 x 12 = 48.*convert_resolution"):
        keras_mixer.load_weights(model, path)


def test_loading_at_non_integer_factor_explains(tmp_path):
    path = checkpoints.save_weights(trained_model(), tmp_path / "small.npz")
    model = MlpMixer(PATCH, 2, 32, 12, 64, input_shape=(40, 40, 3), num_classes=5)
    with pytest.raises(ValueError, match=r"trained on 32x32 images.*not integers"):
        keras_mixer.load_weights(model, path)


def test_model_from_checkpoint_at_new_size(tmp_path):
    small = trained_model()
    path = checkpoints.save_weights(small, tmp_path / "small.npz")
    big, summary = keras_mixer.model_from_checkpoint(path, image_size=96, include_preprocessing=False,
                                                     classifier_activation=None)
    assert summary.tiling == (3, 3)
    subs = np.random.default_rng(5).uniform(-1, 1, (9, 1, SIZE, SIZE, 3)).astype("float32")
    expected = np.stack([run(small, s) for s in subs]).mean(0)
    assert reference.rel_error(run(big, tile(subs, 3, 3)), expected) <= RTOL


def test_block_diagonal_structure_matches_the_paper():
    """Reordered tile by tile, W1' is diag(W1, ..., W1) and W2' is diag(W2, ..., W2)."""
    rng = np.random.default_rng(0)
    k0, b0 = rng.standard_normal((4, 3)), rng.standard_normal(3)
    k1, b1 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    big = tiling.block_diagonal_mlp(k0, b0, k1, b1, (2, 2), (4, 4))
    order = np.concatenate(tile_tokens((2, 2), 2, 2))
    zeros = np.zeros((4, 3))
    expected_0 = np.block([[k0 if i == j else zeros for j in range(4)] for i in range(4)])
    expected_1 = np.block([[k1 if i == j else zeros.T for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(big[0][order], expected_0)
    np.testing.assert_array_equal(big[2][:, order], expected_1)
    np.testing.assert_array_equal(big[1], np.tile(b0, 4))
    np.testing.assert_array_equal(big[3][order], np.tile(b1, 4))
