"""Checkpoint key maps: official flat names <-> a model's variables, the legacy and timm layouts.

The official layout (``vit_jax``/big_vision Flax params flattened with ``/``) is
the lingua franca: ``"stem/kernel"``, ``"MixerBlock_0/token_mixing/Dense_0/kernel"``,
``"pre_head_layer_norm/scale"``, ``"head/kernel"``. Other layouts are converted to
it by pure functions (as timm's ``checkpoint_filter_fn``).
"""

import re

import keras
import numpy as np

HEAD_KEYS = ("head/kernel", "head/bias")
TOKEN_KERNEL_KEY = "MixerBlock_0/token_mixing/Dense_0/kernel"


class Slot:
    """A model variable under its official checkpoint name."""

    def __init__(self, variable):
        self.variable = variable
        self.shape = tuple(variable.shape)

    def read(self):
        """The value as a NumPy array."""
        return np.asarray(keras.ops.convert_to_numpy(self.variable))

    def assign(self, value):
        """Assign an official-layout array, cast to the variable's dtype."""
        self.variable.assign(
            np.asarray(value).astype(keras.backend.standardize_dtype(self.variable.dtype)))


def _dense_slots(layer, prefix):
    """``{prefix/kernel, prefix/bias}`` of a ``Dense`` that holds plain float weights."""
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"Layer {layer.path!r} is quantized ({layer.quantization_mode}): its weights are no "
            "longer float checkpoint weights. Save a quantized model with model.save(...) "
            "(.keras), and load checkpoints before quantizing.")
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"Layer {layer.path!r} has LoRA enabled: merge it first (layer.kernel is the merged "
            "kernel; build a model without LoRA and assign it) or save with model.save(...).")
    return {f"{prefix}/kernel": Slot(layer.kernel), f"{prefix}/bias": Slot(layer.bias)}


def model_variables(model):
    """A Mixer's variables as :class:`Slot` objects keyed by their official checkpoint names.

    ``model`` is a ``keras_mixer.MlpMixer``: its config says what it has, and its
    ``stem``, ``blocks``, ``pre_head_norm`` and ``head`` properties give the layers.
    Raises ``ValueError`` for quantized or LoRA layers (their weights are not a
    checkpoint's).
    """
    if not hasattr(model, "blocks") or not hasattr(model, "config"):
        raise TypeError(
            f"Expected a keras_mixer.MlpMixer, got {type(model).__name__} {model.name!r}. "
            "A .keras file written by an older keras-mixer loads as one with keras_mixer.load_model(path)."
        )
    slots = {"stem/kernel": Slot(model.stem.proj.kernel), "stem/bias": Slot(model.stem.proj.bias)}
    for i, block in enumerate(model.blocks):
        prefix = f"MixerBlock_{i}"
        for j, norm in enumerate((block.norm_0, block.norm_1)):
            slots[f"{prefix}/LayerNorm_{j}/scale"] = Slot(norm.gamma)
            slots[f"{prefix}/LayerNorm_{j}/bias"] = Slot(norm.beta)
        for name, mlp in (("token_mixing", block.token_mixing),
                          ("channel_mixing", block.channel_mixing)):
            for j, dense in enumerate((mlp.dense_0, mlp.dense_1)):
                slots.update(_dense_slots(dense, f"{prefix}/{name}/Dense_{j}"))
    slots["pre_head_layer_norm/scale"] = Slot(model.pre_head_norm.gamma)
    slots["pre_head_layer_norm/bias"] = Slot(model.pre_head_norm.beta)
    if model.config.include_top:
        slots.update(_dense_slots(model.head, "head"))
    return slots


def get_params(model):
    """The model's weights as an official-layout dict of float NumPy arrays.

    Args:
        model: a ``keras_mixer.MlpMixer``.

    Returns:
        ``{key: array}`` with the official (Flax) names and layouts, what an
        official ``.npz`` holds: ``"stem/kernel"``, ``"MixerBlock_0/token_mixing/Dense_0/kernel"``,
        ..., ``"head/bias"`` (no head keys without ``include_top``).

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> params = keras_mixer.checkpoints.get_params(model)
        >>> len(params), params["MixerBlock_0/token_mixing/Dense_0/kernel"].shape   # (S, D_S)
        (30, (16, 16))
    """
    return {key: slot.read() for key, slot in model_variables(model).items()}


def num_blocks(params, separator="/", prefix="MixerBlock_"):
    """How many Mixer blocks an official-layout (or timm, with ``"."``/``"blocks."``) dict has."""
    return len({k.split(separator)[0 if separator == "/" else 1]
                for k in params if k.startswith(prefix)})


# ---------------------------------------------------------------- the legacy layout

_LEGACY_DENSE = {"kernel1": "Dense_0/kernel", "bias1": "Dense_0/bias",
                 "kernel2": "Dense_1/kernel", "bias2": "Dense_1/bias"}


def is_legacy(params):
    """Whether ``params`` use the pre-Linen ``Mixer/encoderblock_N`` names."""
    return any(k.startswith(("Mixer/", "embedding/")) for k in params)


def from_legacy(params):
    """The pre-Linen ``Mixer/encoderblock_N`` layout renamed to the Linen one (as big_vision)."""
    out = {}
    for key, value in params.items():
        new = key
        if key.startswith("embedding/"):
            new = "stem/" + key[len("embedding/"):]
        elif key.startswith("Mixer/encoder_norm/"):
            new = "pre_head_layer_norm/" + key[len("Mixer/encoder_norm/"):]
        else:
            match = re.fullmatch(r"Mixer/encoderblock_(\d+)/(.+)", key)
            if match:
                block, rest = match.groups()
                dense = re.fullmatch(r"(token|channel)_mixing_phase_0/(\w+)", rest)
                if dense and dense.group(2) in _LEGACY_DENSE:
                    rest = f"{dense.group(1)}_mixing/{_LEGACY_DENSE[dense.group(2)]}"
                    value = np.squeeze(value)
                new = f"MixerBlock_{block}/{rest}"
        out[new] = value
    return out


# ---------------------------------------------------------------- the timm layout


def _timm_names(blocks):
    """``(official key, timm key, kind)`` for every weight; kind says how to transpose."""
    names = [("stem/kernel", "stem.proj.weight", "conv"), ("stem/bias", "stem.proj.bias", "")]
    for i in range(blocks):
        b, t = f"MixerBlock_{i}", f"blocks.{i}"
        for j in (0, 1):
            names += [(f"{b}/LayerNorm_{j}/scale", f"{t}.norm{j + 1}.weight", ""),
                      (f"{b}/LayerNorm_{j}/bias", f"{t}.norm{j + 1}.bias", "")]
        for ours, theirs in (("token_mixing", "mlp_tokens"), ("channel_mixing", "mlp_channels")):
            for j in (0, 1):
                names += [(f"{b}/{ours}/Dense_{j}/kernel", f"{t}.{theirs}.fc{j + 1}.weight", "linear"),
                          (f"{b}/{ours}/Dense_{j}/bias", f"{t}.{theirs}.fc{j + 1}.bias", "")]
    names += [("pre_head_layer_norm/scale", "norm.weight", ""),
              ("pre_head_layer_norm/bias", "norm.bias", ""),
              ("head/kernel", "head.weight", "linear"), ("head/bias", "head.bias", "")]
    return names


def _transpose(value, kind, to_timm):
    if kind == "conv" and value.ndim == 4:
        return value.transpose((3, 2, 0, 1) if to_timm else (2, 3, 1, 0))
    if kind == "linear" and value.ndim == 2:
        return value.T
    return value


def _rename(params, blocks, to_timm):
    out = dict(params)
    for ours, theirs, kind in _timm_names(blocks):
        source, target = (ours, theirs) if to_timm else (theirs, ours)
        if source in out:
            out[target] = np.ascontiguousarray(_transpose(np.asarray(out.pop(source)), kind, to_timm))
    return out


def from_timm(state):
    """A timm ``MlpMixer`` state dict (NumPy arrays) in the official layout.

    Keys timm has but the official layout has not are kept under their timm names
    (they are reported as unexpected when loading).
    """
    return _rename(state, num_blocks(state, ".", "blocks."), to_timm=False)


def to_timm(params):
    """Official-layout params as a timm ``MlpMixer`` state dict (NumPy arrays)."""
    return _rename(params, num_blocks(params), to_timm=True)


# ---------------------------------------------------------------- Keras .weights.h5 files

# Keras 3 stores a model's weights (``keras.src.saving.saving_lib``) layer by layer under
# ``layers/<class name in snake case>``, numbered from the second layer of a class in the
# model's layer order (``mixer_block``, ``mixer_block_1``, ...), sublayers under their
# attribute names, and each layer's variables as ``vars/0``, ``vars/1``, ... in creation
# order. For an MlpMixer (keras_mixer.layers) that is below; keras-mixer 0.1 and 0.2 kept
# each MLP's four weights in the MlpBlock itself (``token_mixing/vars/0..3``), later
# releases in its ``dense_0`` and ``dense_1`` sublayers (kernel, bias each).
_H5_LAYERS = (
    (re.compile(r"layers/patch_embedding/proj/vars/(\d+)"), lambda m: "stem", ("kernel", "bias")),
    (re.compile(r"layers/mixer_block(?:_(\d+))?/norm_([01])/vars/(\d+)"),
     lambda m: f"MixerBlock_{m.group(1) or 0}/LayerNorm_{m.group(2)}", ("scale", "bias")),
    (re.compile(r"layers/mixer_block(?:_(\d+))?/(token_mixing|channel_mixing)/vars/(\d+)"),
     lambda m: f"MixerBlock_{m.group(1) or 0}/{m.group(2)}",
     ("Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "Dense_1/bias")),
    (re.compile(r"layers/mixer_block(?:_(\d+))?/(token_mixing|channel_mixing)/dense_([01])/vars/(\d+)"),
     lambda m: f"MixerBlock_{m.group(1) or 0}/{m.group(2)}/Dense_{m.group(3)}", ("kernel", "bias")),
    (re.compile(r"layers/layer_norm(?:alization)?/vars/(\d+)"), lambda m: "pre_head_layer_norm",
     ("scale", "bias")),
    (re.compile(r"layers/dense/vars/(\d+)"), lambda m: "head", ("kernel", "bias")),
)


def from_keras_weights(state):
    """A Keras ``.weights.h5`` of an MlpMixer (``{HDF5 dataset path: array}``) in the official layout.

    Works for any depth and width (the file is read without building its model),
    so that a file of another architecture is reported, not half loaded. Datasets
    that are no Mixer weights keep their HDF5 paths (reported as unexpected when
    loading); random-generator states are not weights and are dropped.
    """
    out = {}
    for path, value in state.items():
        if "seed_generator" in path:
            continue
        key = path
        for pattern, prefix, names in _H5_LAYERS:
            match = pattern.fullmatch(path)
            if match and int(match.group(match.lastindex)) < len(names):
                key = f"{prefix(match)}/{names[int(match.group(match.lastindex))]}"
                break
        out[key] = value
    return out
