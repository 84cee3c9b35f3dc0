"""Inference through torch.export + inductor (``jit_compile=True`` on torch), and the row form it
traces (whose values tests/test_fast.py checks against the plain layers)."""

import numpy as np
import pytest
from helpers.tiny import tiny_classifier, tiny_images

import keras
from keras_mixer import inductor, models

ON_TORCH = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile is torch's")


@ON_TORCH
def test_export_traces_rows_and_keeps_the_outputs():
    import torch

    model = tiny_classifier()
    images = torch.tensor(tiny_images(3))

    class Forward(torch.nn.Module):
        def forward(self, x):
            return model(x, training=False)

    program = torch.export.export(Forward(), (images,), strict=False)
    traced = {str(node.target) for node in program.graph.nodes}
    assert not any("bmm" in name for name in traced), traced  # token mixing as 2D products
    np.testing.assert_allclose(program.module()(images).detach().numpy(),
                               model.predict_on_batch(tiny_images(3)), rtol=1e-5, atol=1e-6)


@ON_TORCH
def test_compiled_forward_freezes_the_weights():
    """Inductor's freezing really applies: the weights are constants of the compiled code,
    so an in-place change is not seen until :func:`inductor.predict_function` recompiles."""
    import torch

    model = tiny_classifier(classifier_activation=None)
    images = torch.tensor(tiny_images(2))
    forward = inductor.compile_forward(model, images)
    with torch.no_grad():
        before = forward(images).numpy()
        model.head.kernel.value.mul_(2.0)
        np.testing.assert_array_equal(forward(images).numpy(), before)
    assert not np.allclose(model.predict_on_batch(tiny_images(2)), before)


@ON_TORCH
def test_jit_compile_predicts_through_inductor_in_bfloat16():
    """bf16 policy + ``jit_compile=True``: compiled, float32 out, within bf16's drift of float32."""
    reference = tiny_classifier(classifier_activation=None)
    model = models.with_dtype(reference, "bfloat16")
    model.compile(jit_compile=True)
    images = tiny_images(4)
    logits = model.predict(images, batch_size=4, verbose=0)
    assert model.predict_function.__qualname__.startswith("predict_function")  # ours, not Keras'
    assert logits.dtype == np.float32
    drift = models.drift(reference.predict(images, verbose=0), logits)
    assert 1e-3 < drift["relative_error"] < 0.05 and drift["top1_agreement"] >= 0.75, drift


@ON_TORCH
@pytest.mark.slow
def test_compiled_predict_follows_weights_and_batch_sizes():
    model, eager = tiny_classifier(), tiny_classifier()
    eager.set_weights(model.get_weights())
    model.compile(jit_compile=True)
    images = tiny_images(5)
    np.testing.assert_allclose(model.predict(images, batch_size=3, verbose=0),
                               eager.predict_on_batch(images), rtol=1e-4, atol=1e-6)
    version = inductor.weights_version(model)
    for m in (model, eager):  # frozen into the compiled code: a change must recompile
        m.head.set_weights([w * 2 for w in m.head.get_weights()])
    assert inductor.weights_version(model) != version
    np.testing.assert_allclose(model.predict_on_batch(images), eager.predict_on_batch(images),
                               rtol=1e-4, atol=1e-6)
