"""torch: token mixing as a batched product (under ``torch.export``, as rows); LayerNorm as
torch's own kernel."""

from keras import ops

from keras_mixer.fast import common


def choosers():
    """``{layer class name: chooser(layer, training, inference) -> call or None}``."""
    return {"MlpBlock": choose_mlp, "LayerNorm": choose_norm}


def choose_mlp(mlp, training, inference):
    """Token mixing only: :func:`exported_rows` while ``torch.export`` traces, else :func:`batched`."""
    if mlp.axis != 1:
        return None
    return exported_rows if traced_by_torch_export() else batched


def choose_norm(norm, training, inference):
    """:func:`fused_layer_norm` always."""
    return fused_layer_norm


def fused_layer_norm(norm, x):
    """Keras' ``ops.layer_normalization``, which runs ``torch.nn.functional.layer_norm``: one
    kernel instead of the formula's eight elementwise passes."""
    outputs = ops.layer_normalization(x, norm.gamma, norm.beta, norm.axis, norm.epsilon)
    return ops.cast(outputs, norm.compute_dtype)


def batched(mlp, x, training=False):
    """Token mixing with the kernels broadcast over the batch: ``torch.matmul`` runs a 2D @ 3D
    product as one GEMM after copying the activations to ``(batch * C, S)`` and the result
    back; a batched product (``bmm``) reads them in place."""
    def matmul(a, b):
        if len(a.shape) == 2:
            a = ops.broadcast_to(a, (ops.shape(b)[0],) + tuple(a.shape))
        return ops.matmul(a, b)

    return common.product_form(mlp, x, matmul=matmul)


def exported_rows(mlp, x, training=False):
    """Token mixing as rows (:func:`common.rows_form`): inductor (:mod:`keras_mixer.inductor`)
    turns each product, its bias and the GELU into one oneDNN matmul with post-ops."""
    return common.rows_form(mlp, x)


def traced_by_torch_export():
    """Whether ``torch.export`` is tracing the layers now."""
    import torch

    return torch.compiler.is_exporting()
