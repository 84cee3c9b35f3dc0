"""ONNX files (Keras' exporter via ``tf2onnx``), checked with ``onnxruntime`` when it is installed."""

import importlib.util
import os

import numpy as np

from keras_mixer.deploy import runner, signatures
from keras_mixer.files import atomic_output, check_name, disk_full_errors


def export_onnx(model, export_dir="saved_models", name="mixer", tolerance=1e-4):
    """Export a Mixer to ``<export_dir>/<name>.onnx``.

    The graph has the exported interface: ``images`` ``(batch, H, W, 3)`` float32
    0-255 at the model size in, probabilities out. Needs the ``onnx`` extra
    (``onnx``, ``tf2onnx``; ``onnxruntime`` for the check).

    Args:
        model: a ``.keras`` file (or an ``MlpMixer`` under TensorFlow).
        export_dir: output directory.
        name: file name without ``.onnx``: one path component of letters, digits,
            ``_``, ``-`` and ``.`` (:func:`keras_mixer.files.check_name`).
        tolerance: largest accepted difference between onnxruntime's and Keras'
            probabilities on sample images.

    Returns:
        ``{"path", "size_bytes", "max_abs_diff"}`` (``max_abs_diff`` is ``None``
        without onnxruntime).

    Raises:
        ImportError: ``tf2onnx`` is not installed (the ``onnx`` extra).
        RuntimeError: the ONNX model differs from Keras by more than ``tolerance``.
        ValueError: a bad name, or a model whose outputs are not finite.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=3)
        >>> folder = tempfile.mkdtemp()
        >>> model.save(os.path.join(folder, "tiny.keras"))
        >>> result = keras_mixer.export_onnx(os.path.join(folder, "tiny.keras"), folder, name="tiny")
        >>> os.path.basename(result["path"]), result["max_abs_diff"] < 1e-4
        ('tiny.onnx', True)
    """
    check_name(name)
    with disk_full_errors("the ONNX file", "nothing was published: free some space and export again"):
        return runner.on_tensorflow("keras_mixer.deploy.onnx:write_onnx", model,
                                    export_dir=export_dir, name=name, tolerance=tolerance)


def write_onnx(model, export_dir, name, tolerance=1e-4):
    """The conversion itself (TensorFlow backend)."""
    import tensorflow as tf

    check_name(name)
    if importlib.util.find_spec("tf2onnx") is None:
        raise ImportError("ONNX export needs tf2onnx and onnx: pip install 'keras-mixer[onnx]'.")
    height, width = model.config.image_size
    images = np.random.default_rng(0).integers(0, 256, (4, height, width, 3)).astype("float32")
    expected = signatures.keras_probabilities(model, images)
    signatures.check_finite(expected, f"Model {model.name!r}")
    served = signatures.probability_model(model)
    os.makedirs(export_dir, exist_ok=True)
    final = os.path.join(export_dir, f"{name}.onnx")
    with atomic_output(final) as tmp:
        served.export(tmp, format="onnx", verbose=False, input_signature=[
            tf.TensorSpec((None, height, width, 3), tf.float32, name=signatures.IMAGES_INPUT)])
        max_diff = None
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: images})[0]
            max_diff = float(np.max(np.abs(got - expected)))
            if not max_diff <= tolerance:
                raise RuntimeError(f"ONNX model differs from Keras by {max_diff:.3g} (> {tolerance}).")
    print(f"Exported ONNX {final}; max |ONNX - Keras| = "
          + ("not checked (no onnxruntime)" if max_diff is None else f"{max_diff:.2e}"))
    return dict(path=final, size_bytes=os.path.getsize(final), max_abs_diff=max_diff)
