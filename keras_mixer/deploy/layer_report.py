"""Where a quantized ``.tflite`` file loses accuracy: each layer's error against float.

Two measurements, both written to ``NAME.MODE.tflite.layers.json`` and drawn in
``NAME.MODE.tflite.layers.png`` (a bar per layer):

* ``debugger``: ``tf.lite.experimental.QuantizationDebugger``'s layer statistics
  for the int8 quantizer (each op run on the *same* quantized input in float
  and in int8: the error that op adds): RMSE, RMSE / scale (about 0.29 is
  pure rounding) and SNR. Computed for ``int8`` and ``mixed``; ``mixed`` ranks
  the layers by it (:func:`rank_layers`) to choose which stay float.
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

from keras_mixer import compat
from keras_mixer.deploy import litert
from keras_mixer.files import atomic_output, write_text

REPORT_SUFFIX = ".layers.json"
CHART_SUFFIX = ".layers.png"
# Ops that only move or relabel data, not worth a bar.
SKIPPED_OPS = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "NUMERIC_VERIFY")
INTEGER_TYPES = ("int8", "uint8", "int16")
MAC_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def _signal_power(float_values, quantized_values, scale, zero_point):
    """The debugger's per-layer ``signal_power``: mean square of the op's float output (of the
    quantized output where the float one is not finite)."""
    values = np.asarray(float_values, dtype="float64")
    if not np.all(np.isfinite(values)):
        values = (np.asarray(quantized_values, dtype="float64") - zero_point) * scale
    return float(np.mean(np.square(values)))


def quiet_debugger(converter, dataset):
    """A ``QuantizationDebugger`` for ``converter`` that also measures each layer's signal power
    (for its SNR). It runs ``tf.lite.Interpreter`` inside: its deprecation warning is silenced
    here, where we cannot choose the interpreter."""
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"signal_power": _signal_power})
    with litert.tf_lite_interpreter_inside(), np.errstate(all="ignore"):
        return tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset,
                                                         debug_options=options)


def quantized_without(debugger, tensors):
    """The debugger's calibrated model quantized with the ops that output ``tensors`` kept float.

    Only the options of the plain quantization are replaced (:func:`compat.set_quantization_debug_options`)."""
    import tensorflow as tf

    compat.set_quantization_debug_options(
        debugger, tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(tensors)))
    with litert.tf_lite_interpreter_inside():
        return debugger.get_nondebug_quantized_model()


def debugger_layers(debugger):
    """The debugger's per-op statistics, least accurate (lowest SNR) first: RMSE, RMSE / scale
    (~0.29 is pure rounding) and SNR in dB (the op's own error against its output's power: low
    where one per-tensor scale is too coarse for most of the values)."""
    with litert.tf_lite_interpreter_inside(), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice")
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        mse, scale = float(row["mean_squared_error"]), float(row["scale"])
        power = float(row.get("signal_power") or "nan")
        snr = (float("inf") if mse == 0 else 10.0 * np.log10(power / mse)) if power > 0 else float("nan")
        layers.append(dict(tensor=row["tensor_name"], op=row["op_name"], rmse=float(np.sqrt(mse)),
                           rmse_over_scale=np.sqrt(mse) / scale if scale else float("nan"),
                           snr_db=float(snr)))
    return sorted(layers, key=lambda layer: (np.isnan(layer["snr_db"]), layer["snr_db"]))


def layer_name(tensor, op=None):
    """The Keras layer an op output belongs to, from its tensor name
    (``mixer_1/mixer_block_0_1/norm_1_1/Rsqrt`` -> ``mixer_block_0/norm_1``; a fused op by its
    last part; a residual add ``mixer_block_0/add``; the final softmax is the ``head``'s), or
    None for the converter's own tensors."""
    if op == "SOFTMAX":
        return "head"
    parts = [part for part in tensor.split(";") if part][-1:]
    parts = parts[0].split("/")[1:] if parts else []  # without the model's own scope
    if not parts:
        return None
    strip = lambda scope: re.sub(r"_1$", "", scope)  # noqa: E731  (tracing's "_1" suffix)
    if parts[0].startswith("mixer_block") and len(parts) > 1:
        return strip(parts[0]) + "/" + (strip(parts[1]) if len(parts) > 2 else parts[1])
    return strip(parts[0])


def rank_layers(layers):
    """The debugger's ops grouped by :func:`layer_name`, least accurate layer first (by its worst
    op's SNR): ``[{"layer", "snr_db", "tensors"}]``."""
    groups = {}
    for layer in layers:
        name = layer_name(layer["tensor"], layer["op"])
        if name is not None:
            group = groups.setdefault(name, dict(layer=name, snr_db=float("inf"), tensors=[]))
            group["tensors"].append(layer["tensor"])
            if not np.isnan(layer["snr_db"]):
                group["snr_db"] = min(group["snr_db"], layer["snr_db"])
    return sorted(groups.values(), key=lambda group: group["snr_db"])


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
            if dtype in INTEGER_TYPES and op not in SKIPPED_OPS]


def _macs(op):
    """Multiply-accumulates of a weighted op (0 for the others)."""
    inputs, outputs = op["inputs"], op["outputs"]
    if op["op"] not in MAC_OPS or len(inputs) < 2 or not outputs or inputs[1] is None:
        return 0
    out_size = int(np.prod(outputs[0][2]))
    weights = inputs[1][2]
    if op["op"] in ("FULLY_CONNECTED", "BATCH_MATMUL"):
        return out_size * int(inputs[0][2][-1])
    if op["op"] == "DEPTHWISE_CONV_2D":
        return out_size * int(np.prod(weights[1:3]))
    return out_size * int(np.prod(weights[1:]))  # CONV_2D: (out, kh, kw, in)


def layer_macs(model):
    """``{layer name: multiply-accumulates}`` of ``model``'s weighted ops (:func:`layer_name`)."""
    macs = {}
    for op in litert.ops(model):
        op_macs = _macs(op)
        if op["outputs"] and op_macs:
            name = layer_name(op["outputs"][0][0], op["op"])
            macs[name] = macs.get(name, 0) + op_macs
    return macs


def integer_coverage(model):
    """How much of ``model`` runs in integer: ``integer_ops`` of ``ops`` (all but QUANTIZE and
    DEQUANTIZE; integer when the output is), and ``integer_macs`` of ``macs`` (the weighted ops'
    multiply-accumulates; integer when the activation input is: a float-activation op with int8
    weights, as in ``dynamic_int8``, counts as float)."""
    counts = dict(integer_ops=0, ops=0, integer_macs=0, macs=0)
    for op in litert.ops(model):
        if op["op"] in ("QUANTIZE", "DEQUANTIZE") or not op["outputs"]:
            continue
        counts["ops"] += 1
        counts["integer_ops"] += op["outputs"][0][1] in INTEGER_TYPES
        macs = _macs(op)
        counts["macs"] += macs
        if op["inputs"][0] is not None and op["inputs"][0][1] in INTEGER_TYPES:
            counts["integer_macs"] += macs
    return counts


def write_report(tflite_path, report):
    """``report`` as ``PATH.layers.json`` and its bar chart as ``PATH.layers.png``; returns both
    paths (the chart's ``None`` where matplotlib, the ``plots`` extra, is not installed)."""
    json_path, png_path = tflite_path + REPORT_SUFFIX, tflite_path + CHART_SUFFIX
    write_text(json_path, json.dumps(report, indent=2, allow_nan=True) + "\n")
    return json_path, plot(report, png_path)


def short_name(tensor):
    """``mixer_1/mixer_block_0_1/norm_0_1/Mean_1;...`` -> ``block_0/norm_0/Mean_1``."""
    name = tensor.split(";")[0]
    parts = [p[:-2] if p.endswith("_1") and p.count("_") > 1 else p for p in name.split("/")]
    parts = [p.replace("mixer_block_", "block_") for p in parts if p not in ("mixer", "mixer_1")]
    return "/".join(parts)[-48:]


def plot(report, path):
    """Horizontal bars per layer: accumulated SNR (dB) and the debugger's RMSE / scale, at ``path``
    (returned; ``None`` without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return None

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
            values = [0.0 if np.isnan(layer["snr_db"]) else min(layer["snr_db"], 100.0) for layer in layers]
            axis.set_xlabel("SNR of this layer's own error (dB; higher is better)")
        colors = ["tab:gray" if layer_name(layer["tensor"], layer["op"]) in floated else "tab:blue"
                  for layer in layers]
        axis.barh(range(len(values)), values, color=colors)
        axis.set_yticks(range(len(values)), names, fontsize=6)
        axis.invert_yaxis()
        axis.set_title(f"{report['mode']}: {key} error per layer (grey: kept float)", fontsize=9)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return os.fspath(path)
