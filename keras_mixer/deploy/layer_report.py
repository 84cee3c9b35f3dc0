"""Where a quantized ``.tflite`` file loses accuracy: each layer's error against float.

Two measurements, both written to ``NAME.MODE.tflite.layers.json`` and drawn in
``NAME.MODE.tflite.layers.png`` (a bar per layer):

* ``debugger``: ``tf.lite.experimental.QuantizationDebugger``'s layer statistics
  for the int8 quantizer (each layer run on the *same* quantized input in float
  and in int8: the error that layer adds): RMSE and RMSE / scale (about 0.29 is
  pure rounding). Computed for ``int8`` and ``mixed``; ``mixed`` keeps the
  worst kinds of layer float.
* ``accumulated``: every op output of the quantized file against the same tensor
  of the float32 file on the same images (the error carried up to that layer):
  RMSE and SNR in dB. Computed for every quantized mode.
"""

import csv
import io
import json
import os
import re
import warnings

import numpy as np

from keras_mixer.deploy import litert
from keras_mixer.files import atomic_output, write_text

REPORT_SUFFIX = ".layers.json"
CHART_SUFFIX = ".layers.png"
# Ops that only move or relabel data, not worth a bar.
SKIPPED_OPS = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "NUMERIC_VERIFY")


def _options(denylisted_nodes=()):
    import tensorflow as tf

    return tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylisted_nodes))


def quiet_debugger(converter, dataset):
    """A ``QuantizationDebugger`` for ``converter`` (it runs ``tf.lite.Interpreter`` inside:
    its deprecation warning is silenced here, where we cannot choose the interpreter)."""
    import tensorflow as tf

    options = _options()
    with litert.tf_lite_interpreter_inside():
        return tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset,
                                                         debug_options=options)


def deny(debugger, tensors):
    """Re-quantize the debugger's calibrated model with ``tensors`` (op outputs) kept float."""
    with litert.tf_lite_interpreter_inside():
        debugger.options = _options(tensors)


def debugger_layers(debugger):
    """The debugger's per-layer statistics, worst (largest RMSE / scale) first."""
    with litert.tf_lite_interpreter_inside(), np.errstate(all="ignore"):
        warnings.filterwarnings("ignore", message="Mean of empty slice")
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        rmse = float(np.sqrt(float(row["mean_squared_error"])))
        scale = float(row["scale"])
        layers.append(dict(tensor=row["tensor_name"], op=row["op_name"], rmse=rmse,
                           rmse_over_scale=rmse / scale if scale else float("nan")))
    return sorted(layers, key=lambda layer: -layer["rmse_over_scale"])


def float_name(name, float_tensors):
    """The float model's name for a quantized model's tensor: the quantizer renames the tensors
    it requantizes (``NAME1``, as the debugger assumes, or ``NAME_int16``)."""
    for candidate in (name, name[:-1] if name[-1:].isdigit() else None,
                      re.sub(r"_u?int(8|16)$", "", name)):
        if candidate in float_tensors:
            return candidate
    return None


def accumulated_layers(float_model, quant_model, images):
    """Every op output of ``quant_model`` against the same-named tensor of ``float_model``."""
    with warnings.catch_warnings():  # "intended for debugging purposes only": this is debugging
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        float_run = litert.interpreter(float_model, preserve_all_tensors=True)
        quant_run = litert.interpreter(quant_model, preserve_all_tensors=True)
    float_tensors = {t["name"]: t for t in float_run.get_tensor_details()}
    quant_tensors = {t["name"]: t for t in quant_run.get_tensor_details()}
    outputs = []  # (op, quantized tensor name, dtype, float tensor name)
    for op, name, dtype in litert.op_types(quant_model):
        reference = float_name(name, float_tensors)
        if op not in SKIPPED_OPS and reference is not None:
            outputs.append((op, name, dtype, reference))
    sums = {name: [0.0, 0.0, 0] for _, name, _, _ in outputs}  # signal power, error power, count
    for image in images:
        for run in (float_run, quant_run):
            detail = run.get_input_details()[0]
            run.set_tensor(detail["index"], litert.quantize_input(image[None], detail))
            run.invoke()
        for _, name, _, reference_name in outputs:
            reference = float_run.get_tensor(float_tensors[reference_name]["index"]).astype("float64")
            got = litert.dequantize(quant_run.get_tensor(quant_tensors[name]["index"]), quant_tensors[name])
            if got.shape != reference.shape:
                continue
            sums[name][0] += float(np.sum(np.square(reference)))
            sums[name][1] += float(np.sum(np.square(got - reference)))
            sums[name][2] += reference.size
    layers = []
    for op, name, dtype, _ in outputs:
        signal, error, count = sums[name]
        if count:
            layers.append(dict(tensor=name, op=op, dtype=dtype, rmse=float(np.sqrt(error / count)),
                               snr_db=(float("inf") if error == 0 else
                                       10.0 * float(np.log10(max(signal, 1e-30) / error)))))
    return layers


def quantized_ops(model):
    """``[{"tensor", "op", "dtype"}]`` of the ops whose outputs are integer (the quantized layers)."""
    return [dict(tensor=name, op=op, dtype=dtype) for op, name, dtype in litert.op_types(model)
            if dtype in ("int8", "uint8", "int16") and op not in SKIPPED_OPS]


def write_report(tflite_path, report):
    """``report`` as ``PATH.layers.json`` and its bar chart as ``PATH.layers.png``; returns both paths."""
    json_path, png_path = tflite_path + REPORT_SUFFIX, tflite_path + CHART_SUFFIX
    write_text(json_path, json.dumps(report, indent=2, allow_nan=True) + "\n")
    plot(report, png_path)
    return json_path, png_path


def short_name(tensor):
    """``mixer_1/mixer_block_0_1/norm_0_1/Mean_1;...`` -> ``block_0/norm_0/Mean_1``."""
    name = tensor.split(";")[0]
    parts = [p[:-2] if p.endswith("_1") and p.count("_") > 1 else p for p in name.split("/")]
    parts = [p.replace("mixer_block_", "block_") for p in parts if p not in ("mixer", "mixer_1")]
    return "/".join(parts)[-48:]


def plot(report, path):
    """Horizontal bars per layer: accumulated SNR (dB) and the debugger's RMSE / scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [(key, report[key]) for key in ("accumulated", "debugger") if report.get(key)]
    height = max(3.0, 0.18 * max(len(layers) for _, layers in panels)) if panels else 3.0
    figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(7 * max(1, len(panels)), height),
                                squeeze=False)
    floated = set(report.get("float_layers", []))
    for axis, (key, layers) in zip(axes[0], panels):
        names = [f"{short_name(layer['tensor'])} ({layer['op']})" for layer in layers]
        if key == "accumulated":
            values = [min(layer["snr_db"], 100.0) for layer in layers]
            axis.set_xlabel("SNR against the float32 file (dB; higher is better)")
        else:
            values = [layer["rmse_over_scale"] for layer in layers]
            axis.set_xscale("log")
            axis.axvline(0.29, color="tab:green", linewidth=1)  # pure rounding error
            axis.set_xlabel("RMSE / scale, this layer alone (lower is better; 0.29: rounding)")
        colors = ["tab:gray" if layer["tensor"] in floated else "tab:blue" for layer in layers]
        axis.barh(range(len(values)), values, color=colors)
        axis.set_yticks(range(len(values)), names, fontsize=6)
        axis.invert_yaxis()
        axis.set_title(f"{report['mode']}: {key} error per layer (grey: kept float)", fontsize=9)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return os.fspath(path)
