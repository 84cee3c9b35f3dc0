"""Inference through ``torch.compile`` (inductor) for a Keras model on the torch backend.

Keras' own ``jit_compile=True`` on torch wraps ``predict_step`` in ``torch.compile``:
dynamo then breaks the graph inside every Keras layer call (``inspect.Signature.bind``,
``importlib``, the ``__setattr__`` hook) and recompiles per layer until its recompile
limit, with no speed-up. Here the forward pass is captured once by ``torch.export``
(non-strict: Keras' Python runs as usual and only the tensor operations are recorded)
and that graph is compiled by inductor with freezing: the weights become constants,
oneDNN prepacks them for the CPU's matrix units (AMX) and fuses bias and GELU into
the matmuls. ``MlpMixer`` uses this for ``predict`` when compiled with
``jit_compile=True`` on torch.
"""

import keras

from keras_mixer import compat

# Inductor options: weights as constants, so that oneDNN can prepack them and fuse post-ops.
OPTIONS = {"freezing": True}


def compile_forward(model, example):
    """``fn(x) = model(x, training=False)``, exported and compiled for inputs like ``example``.

    The batch size stays dynamic; the other dimensions and the dtype are fixed. The
    weights are frozen into the compiled code: compile again after changing them
    (:func:`predict_function` does).
    """
    import torch

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, training=False)

    batch = {0: torch.export.Dim.AUTO}
    with torch.no_grad():
        program = torch.export.export(Forward(), (example,), dynamic_shapes=(batch,), strict=False)
    compiled = torch.compile(program.module(), options=OPTIONS)

    def forward(x):
        with compat.inductor_freezing(OPTIONS):  # else the weights stay inputs: nothing is fused
            return compiled(x)

    return forward


def weights_version(model):
    """Changes whenever a weight is replaced or updated in place (torch counts in-place writes)."""
    return tuple((id(v.value), v.value._version) for v in model.variables)


def predict_function(model):
    """A Keras ``predict_function`` (``fn(data) -> outputs``) running :func:`compile_forward`.

    Compiles on the first call, and again when the input's shape (batch size aside) or
    dtype changes, or when any weight has changed since (training, ``load_weights``).
    """
    import torch

    compiled = {}

    def predict(data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data[0])
        x = keras.ops.convert_to_tensor(x)
        key = (tuple(x.shape[1:]), x.dtype, weights_version(model))
        if key not in compiled:
            compiled.clear()
            compiled[key] = compile_forward(model, x)
        with torch.no_grad():
            return compiled[key](x)

    return predict
