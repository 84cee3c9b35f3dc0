"""keras_mixer.compat: each private API it reaches still behaves as the entry says, on the
installed releases; an upgrade that changes one fails here (move compat.VERIFIED once checked)."""

import inspect

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_mixer
from keras_mixer import compat, data

BACKEND = keras.backend.backend()


@pytest.mark.parametrize("library", sorted(compat.VERIFIED))
def test_installed_releases_are_the_verified_ones(library):
    pytest.importorskip(library)
    assert compat.verified(library), (
        f"{library} {compat.version(library)} is not in compat.VERIFIED: check every entry of "
        "keras_mixer/compat.py against it, then add it.")


def test_sublayers_are_keras_tracked_layers_in_creation_order():
    block = keras_mixer.MixerBlock(8, 16)
    block.build((None, 4, 8))
    assert [layer.name for layer in compat.sublayers(block)] == [
        "norm_0", "token_mixing", "norm_1", "channel_mixing", "drop_path"]
    assert sorted(layer.name for layer in compat.sublayers(block, recursive=True)) == sorted([
        "norm_0", "token_mixing", "dense_0", "dense_1", "norm_1", "channel_mixing", "dense_0",
        "dense_1", "drop_path"])


def test_backend_optimizer_class_is_what_keras_instantiates():
    cls = compat.backend_optimizer_class(keras.optimizers.AdamW)
    assert issubclass(cls, keras.optimizers.AdamW)
    assert type(keras.optimizers.AdamW()) is cls
    if BACKEND == "torch":  # Keras' _foreach variant, which a plain subclass would not get
        assert cls is not keras.optimizers.AdamW
        assert hasattr(cls, "_parallel_update_step")  # its _foreach update
        assert not hasattr(keras.optimizers.AdamW, "_parallel_update_step")


@pytest.mark.skipif(BACKEND != "torch", reason="torch's private kernels")
def test_torch_private_kernels_exist_with_the_arguments_used():
    import torch
    import torch._dynamo.utils as dynamo_utils

    assert compat.fused_adamw_available()
    assert callable(torch._foreach_mul)
    source = inspect.getsource(dynamo_utils.is_parameter_freezing)
    assert "freezing" in source  # Dynamo still reads freezing from inductor's global config
    with compat.inductor_freezing({"freezing": True}):
        assert torch._inductor.config.freezing
    assert not torch._inductor.config.freezing


def test_quantization_debugger_reads_its_options_attribute():
    tf = pytest.importorskip("tensorflow")
    debugger = tf.lite.experimental.QuantizationDebugger
    # get_nondebug_quantized_model quantizes with the denylist read from _debug_options ...
    assert "self._debug_options.denylisted_nodes" in inspect.getsource(debugger._get_quantized_model)
    assert "_get_quantized_model" in inspect.getsource(debugger.get_nondebug_quantized_model)
    # ... and the public setter still rebuilds the instrumented model (why compat sets it directly).
    assert "_init_from_converter" in inspect.getsource(debugger.options.fset)


def test_keras_cv_randaugment_is_a_pure_function_of_the_reseed():
    """keras-cv's RandAugment, reseeded before each call, gives the same output for the same
    seed whatever it drew before, and another one for another seed (keras-cv 0.9: per-layer
    tf.random.Generators and FactorSamplers; a new random state there breaks this)."""
    layer = data.rand_augment(ops=2, magnitude=10.0, seed=0)
    reseed = compat.keras_cv_reseeder(layer)
    images = tf.random.stateless_uniform((4, 16, 16, 3), (1, 2), maxval=255.0)

    @tf.function
    def augment(seed):
        reseed(seed)
        return layer(images)

    first = augment(tf.constant([3, 4], tf.int64)).numpy()
    for seed in ([7, 7], [3, 5], [0, 4]):
        augment(tf.constant(seed, tf.int64))  # draws in between
    np.testing.assert_array_equal(augment(tf.constant([3, 4], tf.int64)).numpy(), first)
    assert not np.array_equal(augment(tf.constant([3, 5], tf.int64)).numpy(), first)
    assert not np.array_equal(first, images.numpy())


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's trainer")
def test_keras_still_needs_the_multi_worker_patch():
    """Fails once Keras changes the lines compat.patch_keras_for_multi_worker works around:
    then check keras-team/keras#20585 and remove the patch (or adapt it)."""
    assert compat.keras_multi_worker_bugs() == list(compat.KERAS_MULTI_WORKER_BUGS)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's distribution library")
def test_keras_jax_rng_initializer_is_still_there():
    """compat.jax_initialize_rng calls Keras' private initialize_rng, taking no argument."""
    from keras.src.backend.jax import distribution_lib

    assert not inspect.signature(distribution_lib.initialize_rng).parameters
    assert "initialize_rng" in inspect.getsource(distribution_lib.initialize)
