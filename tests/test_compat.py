"""keras_mixer.compat: each private API it reaches still behaves as the entry says, on the
installed releases; an upgrade that changes one fails here (move compat.VERIFIED once checked)."""

import inspect

import pytest

import keras
import keras_mixer
from keras_mixer import compat

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
        assert cls._parallel_update_step is not keras.optimizers.AdamW._parallel_update_step


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
