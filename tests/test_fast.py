"""The backend fast paths (keras_mixer.fast) compute the plain layers' function, and step aside
where Keras' own code must run (quantized or LoRA layers, exports, a switch)."""

import numpy as np
import pytest
from helpers.autodiff import input_gradient, values_and_gradients
from helpers.tiny import TINY, tiny_images

import keras
import keras_mixer
from keras_mixer import fast
from keras_mixer.fast import common
from keras_mixer.fast import jax as jax_paths

BACKEND = keras.backend.backend()


def random_block(approximate_gelu=True, seed=1):
    block = keras_mixer.MixerBlock(16, 64, approximate_gelu=approximate_gelu)
    block.build((2, 16, 32))
    rng = np.random.default_rng(seed)
    for variable in block.weights:  # nonzero biases and LayerNorm offsets
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.5)
    return block


def block_values_and_gradients(block, x, training):
    """The block's output times fixed weights, and the gradients of its sum w.r.t. x and every weight."""
    weights = keras.ops.convert_to_tensor(np.linspace(-1, 1, x.size, dtype="float32").reshape(x.shape))
    return values_and_gradients(
        lambda t: keras.ops.cast(block(t, training=training), "float32") * weights, x,
        block.trainable_weights)


@pytest.mark.parametrize("approximate_gelu", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_fast_block_computes_the_plain_block(approximate_gelu, training):
    # Whatever fast path this backend runs (training, or inside the model's predict and test
    # steps), the block's values and its gradients w.r.t. the input and all 12 weights are the
    # plain layers' (fast.disabled()).
    block = random_block(approximate_gelu)
    x = np.random.default_rng(2).normal(size=(2, 16, 32)).astype("float32")
    with fast.inference():
        assert fast.path_for(block, training) is not None or BACKEND != "tensorflow"
        got = block_values_and_gradients(block, x, training)
    with fast.disabled():
        want = block_values_and_gradients(block, x, training)
    assert len(want) == 2 + len(block.trainable_weights) == 14
    for have, expected in zip(got, want):
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(have, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("training", [True, False])
def test_fast_block_is_as_accurate_as_the_plain_block_in_bfloat16(training):
    # Under mixed_bfloat16 the two forms round differently (bias gradients are sums of bfloat16
    # terms), so each is held to the float32 block: the fast one no further from it than twice
    # the plain one's distance (or 2% of the largest value).
    reference_block = random_block()
    x = np.random.default_rng(2).normal(size=(2, 16, 32)).astype("float32")
    with fast.disabled():
        reference = block_values_and_gradients(reference_block, x, training)
    keras.config.set_dtype_policy("mixed_bfloat16")
    block = random_block()
    with fast.inference():
        got = block_values_and_gradients(block, x, training)
    with fast.disabled():
        plain = block_values_and_gradients(block, x, training)
    for have, other, expected in zip(got, plain, reference):
        scale = np.abs(expected).max()
        assert np.abs(have - expected).max() <= max(2 * np.abs(other - expected).max(), 2e-2 * scale)


@pytest.mark.parametrize("axis", [1, -1])
def test_mlp_forms_compute_the_plain_mlp(axis):
    # The product and rows forms that the fast paths use, against the Dense/EinsumDense layers.
    mlp = keras_mixer.MlpBlock(24, axis=axis)
    mlp.build((2, 16, 8))
    rng = np.random.default_rng(0)
    mlp.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in mlp.get_weights()])
    x = rng.normal(size=(2, 16, 8)).astype("float32")
    with fast.disabled():
        want = values_and_gradients(lambda t: mlp(t) ** 2, x, mlp.trainable_weights)
    for form in (common.product_form, common.rows_form):
        got = values_and_gradients(lambda t: form(mlp, t) ** 2, x, mlp.trainable_weights)
        for have, expected in zip(got, want):
            np.testing.assert_allclose(have, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_stem_as_patch_product_equals_the_convolution():
    # JAX's stem form: one product over flattened patches, against keras.ops.conv, with gradients.
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 8, 12, 3)).astype("float32")
    kernel = rng.normal(size=(4, 4, 3, 5)).astype("float32")
    bias = keras.ops.convert_to_tensor(rng.normal(size=(5,)).astype("float32"))
    weights = keras.ops.convert_to_tensor(rng.normal(size=(2, 6, 5)).astype("float32"))

    def convolution(x, k):
        y = keras.ops.conv(x, k, strides=4, padding="valid") + bias
        return keras.ops.reshape(y, (2, 6, 5)) * weights

    def product(x, k):
        return jax_paths.patch_product(x, k, bias) * weights

    np.testing.assert_allclose(keras.ops.convert_to_numpy(product(images, kernel)),
                               keras.ops.convert_to_numpy(convolution(images, kernel)), rtol=1e-5, atol=1e-5)
    for wrt_kernel in (False, True):
        grads = [input_gradient(lambda t, fn=fn: fn(images, t) if wrt_kernel else fn(t, kernel),
                                kernel if wrt_kernel else images) for fn in (convolution, product)]
        assert np.abs(grads[0]).max() > 0.1
        np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-5)
    stem = keras_mixer.PatchEmbedding(4, 5)
    stem.build(images.shape)
    stem.proj.kernel.assign(kernel)
    stem.proj.bias.assign(bias)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stem(images) * weights),
                               keras.ops.convert_to_numpy(convolution(images, kernel)), rtol=1e-5, atol=1e-5)


def test_the_paths_each_backend_takes():
    # The table of the performance guide: which layer runs which form, where.
    block = random_block()
    stem = keras_mixer.PatchEmbedding(8, 32)
    token_mlp, channel_mlp = block.token_mixing, block.channel_mixing

    def chosen(layer, training=False, inference=False):
        with fast.inference() if inference else fast.disabled() if False else _null():
            path = fast.path_for(layer, training)
        return None if path is None else path.__name__

    expected = {
        "jax": dict(block_training="training_block", block_inference=None,
                    block_call=None, stem="stem_as_patch_product", token=None, channel=None),
        "tensorflow": dict(block_training="mixer_block", block_inference="mixer_block",
                           block_call=None, stem=None, token=None, channel=None),
        "torch": dict(block_training=None, block_inference=None, block_call=None, stem=None,
                      token="batched", channel=None),
    }[BACKEND]
    assert dict(block_training=chosen(block, training=True),
                block_inference=chosen(block, inference=True), block_call=chosen(block),
                stem=chosen(stem), token=chosen(token_mlp), channel=chosen(channel_mlp)) == expected
    with fast.disabled():
        assert all(fast.path_for(layer, True) is None for layer in (block, stem, token_mlp))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("change", ["quantize", "lora"])
def test_fast_paths_step_aside_for_quantized_and_lora_layers(change):
    block = random_block()
    if change == "quantize":
        block.channel_mixing.dense_1.quantize("int8")
    else:
        block.token_mixing.dense_0.enable_lora(2)
    with fast.inference():
        assert fast.path_for(block, training=True) is None
        assert fast.path_for(block.token_mixing, training=True) is None or change == "quantize"
    x = np.random.default_rng(3).normal(size=(2, 16, 32)).astype("float32")
    with fast.inference():
        got = keras.ops.convert_to_numpy(block(x, training=True))
    with fast.disabled():
        want = keras.ops.convert_to_numpy(block(x, training=True))
    # (torch still runs its LayerNorm kernel: the same values to rounding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_predict_and_evaluate_fuse_on_tensorflow_and_give_the_plain_answer(fused_traces):
    # MlpMixer's predict and test steps trace under fast.inference (on TensorFlow, bias + GELU
    # and LayerNorm in XLA); a direct call, as exports trace it, keeps plain ops.
    fused = fused_traces
    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=5,
                                 classifier_activation=None)
    rng = np.random.default_rng(2)
    for variable in model.weights:  # nonzero biases, LayerNorm offsets and head
        variable.assign(rng.normal(size=variable.shape).astype("float32") * 0.3)
    images = tiny_images(3)
    labels = np.array([0, 3, 4])
    plain = keras.ops.convert_to_numpy(model(images))
    assert not fused
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    predicted = model.predict_on_batch(images)
    loss = model.evaluate(images, labels, verbose=0)
    # Two MLPs per block, traced once by the predict step and once by the test step.
    assert len(fused) == (8 if BACKEND == "tensorflow" else 0)
    assert np.abs(plain).max() > 0.5
    np.testing.assert_allclose(predicted, plain, rtol=0, atol=1e-5 * np.abs(plain).max())
    plain_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, plain)
    np.testing.assert_allclose(loss, keras.ops.convert_to_numpy(plain_loss), rtol=1e-5)
