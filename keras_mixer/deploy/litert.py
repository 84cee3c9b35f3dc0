"""Running ``.tflite`` files in the LiteRT interpreter (``ai_edge_litert``), as phones do.

Every check, latency figure and per-layer comparison of :mod:`.tflite` goes through
here; nothing uses the deprecated ``tf.lite.Interpreter``.
"""

import contextlib
import time
import warnings

import numpy as np

from keras_mixer import startup

SIGNATURE = "serving_default"


@contextlib.contextmanager
def tf_lite_interpreter_inside():
    """For TF's own tools that run ``tf.lite.Interpreter`` inside (the converter's
    calibrator, the QuantizationDebugger): its deprecation warning is not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        yield


def interpreter(model, num_threads=1, preserve_all_tensors=False, delegates=True):
    """An allocated ``ai_edge_litert`` interpreter for a ``.tflite`` path or model bytes
    (``delegates=False``: without XNNPACK, so that its ops are the file's own)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    source = dict(model_content=model) if isinstance(model, bytes) else dict(model_path=str(model))
    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with startup.native_logs_muted():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        result = Interpreter(**source, num_threads=num_threads, experimental_op_resolver_type=resolver,
                             experimental_preserve_all_tensors=preserve_all_tensors)
        result.allocate_tensors()
    return result


def quantize_input(images, detail):
    """Float 0-255 pixels as the input tensor's type (uint8/int8 through its scale and zero point)."""
    if detail["dtype"] == np.float32:
        return np.asarray(images, np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(np.asarray(images) / scale + zero), info.min, info.max).astype(detail["dtype"])


def dequantize(values, detail):
    """A tensor's values as float64 (integer tensors through their scale and zero point)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        return values.astype("float64")
    scale, zero = detail["quantization"]
    return (values.astype("float64") - zero) * (scale or 1.0)


def run_tflite(model, images, num_threads=1, interp=None):
    """Per-image outputs (float, dequantized) and the median single-image ``invoke`` time in ms."""
    interp = interp or interpreter(model, num_threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    outputs, times = [], []
    for image in images:
        interp.set_tensor(inp["index"], quantize_input(image[None], inp))
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
        outputs.append(dequantize(interp.get_tensor(out["index"]), out)[0])
    return np.stack(outputs), 1e3 * float(np.median(times[1:] or times))


def latency_ms(model, image, num_threads=1, repeats=50):
    """Median ``invoke`` time (ms) of one image at ``num_threads``, after a warm-up call."""
    interp = interpreter(model, num_threads)
    images = np.repeat(np.asarray(image)[None], repeats + 1, axis=0)
    return run_tflite(model, images, num_threads, interp)[1]


def ops(model):
    """Each op of ``model`` in execution order: ``{"op", "inputs", "outputs"}``, the tensors as
    ``(name, dtype name, shape)`` (an absent optional input is None)."""
    interp = interpreter(model, delegates=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}

    def describe(index):
        if index < 0:
            return None
        tensor = tensors[index]
        return tensor["name"], np.dtype(tensor["dtype"]).name, tuple(int(n) for n in tensor["shape"])

    return [dict(op=op["op_name"], inputs=[describe(i) for i in op["inputs"]],
                 outputs=[describe(i) for i in op["outputs"] if i >= 0])
            for op in interp._get_ops_details()]  # the only API that lists a model's ops


def op_types(model):
    """``[(op name, output tensor name, output dtype name), ...]`` in execution order."""
    return [(op["op"], name, dtype) for op in ops(model) for name, dtype, _ in op["outputs"]]


def signature(model):
    """``{"inputs": {name: (shape, dtype)}, "outputs": {...}}`` of the ``serving_default`` signature."""
    runner = interpreter(model).get_signature_runner(SIGNATURE)
    describe = lambda details: {name: (tuple(int(n) for n in d["shape"]), np.dtype(d["dtype"]).name)  # noqa: E731
                                for name, d in details.items()}
    return dict(inputs=describe(runner.get_input_details()), outputs=describe(runner.get_output_details()))
