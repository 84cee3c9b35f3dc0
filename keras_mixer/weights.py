"""Loading and saving Mixer weights: official ``.npz``, timm state dicts, Keras files, presets.

Every checkpoint is read into the official flat layout (``"MixerBlock_0/token_mixing/
Dense_0/kernel"``, reference.md section 3), checked against the model as a whole,
and only then assigned, so an error never leaves a model half loaded.

- official ``.npz``: the Linen layout and the older ``Mixer/encoderblock_N`` one,
  read with ``allow_pickle=False``;
- timm state dicts: ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors``;
  Linear weights are transposed, the stem conv goes from OIHW to HWIO;
- Keras ``.weights.h5`` files, loaded by Keras;
- presets (``"imagenet21k"``, ...; see :mod:`keras_mixer.presets`).

Rules (as the official loader): a head of another size is skipped with a message
and stays zero-initialised; a model without head ignores the checkpoint's head;
anything else missing, unexpected or of the wrong shape is an error naming the
key and both shapes. A checkpoint trained on a smaller token grid loads into a
model whose grid is an integer multiple of it and whose ``tokens_mlp_dim`` is
multiplied accordingly (block-diagonal init, :mod:`keras_mixer.resolution`).
"""

import dataclasses
import os
import re
import warnings
import zipfile
import zlib

import keras
import numpy as np

from keras_mixer import presets, resolution
from keras_mixer.files import atomic_output
from keras_mixer.layers import check_image_shape
from keras_mixer.models import VARIANTS, mixer_blocks

HEAD_KEYS = ("head/kernel", "head/bias")
NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIXES = (".safetensors",)
KERAS_SUFFIXES = (".weights.h5",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


@dataclasses.dataclass
class LoadSummary:
    """What :func:`load_params` did."""

    loaded: list
    skipped: list = dataclasses.field(default_factory=list)
    messages: list = dataclasses.field(default_factory=list)
    tiling: tuple = (1, 1)

    @property
    def num_values(self):
        return int(sum(np.prod(shape) for _, shape in self.loaded))

    def __str__(self):
        lines = [f"Loaded {len(self.loaded)} tensors ({self.num_values:,} values)."]
        if not any(key.startswith("head/") for key, _ in self.loaded) and not self.skipped:
            lines.append("No classification head in the model (include_top=False).")
        return "\n".join(lines + self.messages)


# ---------------------------------------------------------------- model side


def model_variables(model):
    """The model's variables keyed by their official checkpoint names."""
    stem = model.get_layer("stem")
    variables = {"stem/kernel": stem.proj.kernel, "stem/bias": stem.proj.bias}
    for i, block in enumerate(mixer_blocks(model)):
        prefix = f"MixerBlock_{i}"
        for j, norm in enumerate((block.norm_0, block.norm_1)):
            variables[f"{prefix}/LayerNorm_{j}/scale"] = norm.gamma
            variables[f"{prefix}/LayerNorm_{j}/bias"] = norm.beta
        for name, mlp in (("token_mixing", block.token_mixing),
                          ("channel_mixing", block.channel_mixing)):
            for j in (0, 1):
                variables[f"{prefix}/{name}/Dense_{j}/kernel"] = getattr(mlp, f"kernel_{j}")
                variables[f"{prefix}/{name}/Dense_{j}/bias"] = getattr(mlp, f"bias_{j}")
    norm = model.get_layer("pre_head_layer_norm")
    variables["pre_head_layer_norm/scale"] = norm.gamma
    variables["pre_head_layer_norm/bias"] = norm.beta
    if any(layer.name == "head" for layer in model.layers):
        head = model.get_layer("head")
        variables["head/kernel"] = head.kernel
        variables["head/bias"] = head.bias
    return variables


def get_params(model):
    """The model's weights as an official-layout dict of float NumPy arrays."""
    return {key: np.asarray(keras.ops.convert_to_numpy(var.value))
            for key, var in model_variables(model).items()}


def infer_variant(model):
    """The paper variant (``"B/16"``, ...) a model has the architecture of."""
    stem = model.get_layer("stem")
    blocks = mixer_blocks(model)
    for name, config in VARIANTS.items():
        if (config.patch_size, config.num_blocks, config.hidden_dim) == (
                stem.patch_size, len(blocks), stem.hidden_dim):
            return name
    raise ValueError(
        f"Weights presets exist for the paper variants only; model {model.name!r} has "
        f"patch {stem.patch_size}, {len(blocks)} blocks and width {stem.hidden_dim}, "
        f"which is none of {', '.join(VARIANTS)}. Pass a checkpoint file instead."
    )


# ---------------------------------------------------------------- layouts

_LEGACY_DENSE = {"kernel1": "Dense_0/kernel", "bias1": "Dense_0/bias",
                 "kernel2": "Dense_1/kernel", "bias2": "Dense_1/bias"}


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


def is_legacy(params):
    return any(k.startswith(("Mixer/", "embedding/")) for k in params)


def _timm_names(num_blocks):
    """``(official key, timm key, kind)`` for every weight; kind says how to transpose."""
    names = [("stem/kernel", "stem.proj.weight", "conv"), ("stem/bias", "stem.proj.bias", "")]
    for i in range(num_blocks):
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


def from_timm(state):
    """A timm ``MlpMixer`` state dict (NumPy arrays) in the official layout.

    Keys timm has but the official layout has not are kept under their timm names
    (they are reported as unexpected when loading).
    """
    num_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    out = dict(state)
    for ours, theirs, kind in _timm_names(num_blocks):
        if theirs in out:
            out[ours] = np.ascontiguousarray(_transpose(np.asarray(out.pop(theirs)), kind, False))
    return out


def to_timm(params):
    """Official-layout params as a timm ``MlpMixer`` state dict (NumPy arrays)."""
    num_blocks = len({k.split("/")[0] for k in params if k.startswith("MixerBlock_")})
    out = dict(params)
    for ours, theirs, kind in _timm_names(num_blocks):
        if ours in out:
            out[theirs] = np.ascontiguousarray(_transpose(np.asarray(out.pop(ours)), kind, True))
    return out


# ---------------------------------------------------------------- reading files


def _suffix(path, suffixes):
    return path.lower().endswith(suffixes)


def read_npz(path):
    """An official ``.npz`` checkpoint as a dict (Linen layout), without unpickling anything."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                params = {key: data[key] for key in data.files}
    except ValueError as error:
        if "pickle" in str(error):
            raise CheckpointError(
                f"{path} contains pickled Python objects, which are never loaded "
                "(allow_pickle=False): a weights file holds numeric arrays only."
            ) from error
        raise CheckpointError(f"Cannot read {path}: {error}") from error
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise CheckpointError(
            f"Cannot read {path} as an .npz archive (truncated or corrupt?): {error}"
        ) from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} holds a single array, not an .npz archive of weights.")
    return from_legacy(params) if is_legacy(params) else params


def read_torch(path):
    """A timm ``.pth`` state dict, read with ``torch.load(weights_only=True)``."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading {path} needs PyTorch (`pip install torch`); or use the .safetensors "
            "version of the checkpoint."
        ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad or unsafe files
        raise CheckpointError(
            f"Cannot read {path} with torch.load(weights_only=True) (truncated or corrupt, "
            f"or it holds more than tensors): {error}"
        ) from error
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def read_safetensors(path):
    """A timm ``.safetensors`` state dict (no PyTorch needed)."""
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise ImportError(f"Reading {path} needs `pip install safetensors`.") from error

    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error type
        raise CheckpointError(
            f"Cannot read {path} as .safetensors (truncated or corrupt?): {error}"
        ) from error


def read_checkpoint(path):
    """Any supported checkpoint file as an official-layout dict of NumPy arrays."""
    path = os.fspath(path)
    readers = ((NPZ_SUFFIXES, read_npz), (TORCH_SUFFIXES, lambda p: from_timm(read_torch(p))),
               (SAFETENSORS_SUFFIXES, lambda p: from_timm(read_safetensors(p))))
    for suffixes, reader in readers:
        if _suffix(path, suffixes):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            return reader(path)
    raise ValueError(
        f"Unsupported weights {path!r}: expected a preset name, or a .npz (official), "
        ".pth or .safetensors (timm) or .weights.h5 (Keras) file."
    )


def config_from_params(params):
    """:func:`~keras_mixer.MlpMixer` architecture arguments read off a checkpoint's shapes."""
    try:
        stem = params["stem/kernel"]
        tokens = params["MixerBlock_0/token_mixing/Dense_0/kernel"]
        channels = params["MixerBlock_0/channel_mixing/Dense_0/kernel"]
    except KeyError as error:
        raise CheckpointError(f"Not a Mixer checkpoint: no {error.args[0]!r}.") from None
    grid = resolution.square_grid(tokens.shape[0])
    config = dict(
        patch_size=int(stem.shape[0]),
        num_blocks=len({k.split("/")[0] for k in params if k.startswith("MixerBlock_")}),
        hidden_dim=int(stem.shape[3]),
        tokens_mlp_dim=int(tokens.shape[1]),
        channels_mlp_dim=int(channels.shape[1]),
        input_shape=(grid[0] * stem.shape[0], grid[1] * stem.shape[1], int(stem.shape[2])),
    )
    if "head/kernel" in params:
        config["num_classes"] = int(params["head/kernel"].shape[1])
    else:
        config["include_top"] = False
    return config


# ---------------------------------------------------------------- loading


def _head_plan(variables, params, messages):
    """Split off a checkpoint head the model cannot take.

    Returns the params to load and the model's keys that keep their initial values.
    """
    params = dict(params)
    ckpt_head = {k: params.pop(k) for k in HEAD_KEYS if k in params}
    if "head/kernel" not in variables:
        return params, ()  # include_top=False: the head is not part of the model
    if not ckpt_head:
        messages.append("The checkpoint has no head: the head stays freshly (zero) initialised.")
        return params, HEAD_KEYS
    kernel, bias = ckpt_head.get("head/kernel"), ckpt_head.get("head/bias")
    width, classes = tuple(variables["head/kernel"].shape)
    if (kernel is not None and bias is not None and kernel.ndim == 2
            and kernel.shape[0] == width and kernel.shape[1] != classes
            and bias.shape == (kernel.shape[1],)):
        messages.append(
            f"Skipped the checkpoint's head: {kernel.shape[1]} classes, the model has "
            f"{classes}; the head stays freshly (zero) initialised."
        )
        return params, HEAD_KEYS
    params.update(ckpt_head)  # same size, or malformed: checked with everything else
    return params, ()


def _transfer_resolution(model, variables, params, summary):
    """Block-diagonal token mixing when the model's grid is a multiple of the checkpoint's."""
    key = "MixerBlock_0/token_mixing/Dense_0/kernel"
    if key not in params or key not in variables:
        return params
    ckpt_tokens, ckpt_hidden = np.shape(params[key])
    model_tokens, model_hidden = tuple(variables[key].shape)
    if ckpt_tokens == model_tokens:
        return params
    stem = model.get_layer("stem")
    target_grid = check_image_shape(model.input.shape[1:], stem.patch_size)
    source_grid = resolution.square_grid(ckpt_tokens)
    side = source_grid[0] * stem.patch_size
    try:
        kh, kw = resolution.tiling_factors(source_grid, target_grid)
    except ValueError as error:
        raise CheckpointError(
            f"The checkpoint was trained on {side}x{side} images (patch {stem.patch_size}). "
            f"{error}"
        ) from None
    if model_hidden != ckpt_hidden * kh * kw:
        raise CheckpointError(
            f"The checkpoint was trained on {side}x{side} images; the model's token grid "
            f"is {kh}x{kw} times larger, and the paper's block-diagonal init needs "
            f"tokens_mlp_dim = {kh * kw} x {ckpt_hidden} = {kh * kw * ckpt_hidden} "
            f"(the model has {model_hidden}). Build the model at {side}x{side}, load, "
            "and call keras_mixer.convert_resolution(model, image_size), or build it "
            f"with MlpMixer(..., tokens_mlp_dim={kh * kw * ckpt_hidden})."
        )
    summary.tiling = (kh, kw)
    summary.messages.append(
        f"Resolution transfer: {source_grid[0]}x{source_grid[1]} -> "
        f"{target_grid[0]}x{target_grid[1]} tokens, token-mixing MLPs initialised "
        f"block-diagonally ({kh * kw} tiles)."
    )
    return resolution.expand_token_mixing(params, source_grid, target_grid)


def _shape_name(shape):
    return "(" + ", ".join(str(int(d)) for d in shape) + (",)" if len(shape) == 1 else ")")


def load_params(model, params, verbose=True):
    """Assign official-layout ``params`` to ``model`` after checking all of them.

    Returns:
        A :class:`LoadSummary`. Raises :class:`CheckpointError` (naming every bad
        key with both shapes) before assigning anything.
    """
    variables = model_variables(model)
    params = {k: np.asarray(v) for k, v in params.items()}
    messages = []
    params, keep_init = _head_plan(variables, params, messages)
    summary = LoadSummary(loaded=[], skipped=list(keep_init), messages=messages)
    params = _transfer_resolution(model, variables, params, summary)

    expected = [k for k in variables if k not in keep_init]
    problems = []
    for key in expected:
        shape = tuple(variables[key].shape)
        if key not in params:
            problems.append(f"missing key {key!r} (model shape {_shape_name(shape)})")
        elif params[key].shape != shape:
            problems.append(
                f"wrong shape for {key!r}: checkpoint {_shape_name(params[key].shape)}, "
                f"model {_shape_name(shape)}"
            )
        elif not np.issubdtype(params[key].dtype, np.floating):
            problems.append(f"{key!r} has dtype {params[key].dtype}, expected floats")
    for key in params:
        if key not in variables:
            problems.append(f"unexpected key {key!r} (checkpoint shape "
                            f"{_shape_name(params[key].shape)})")
    if problems:
        raise CheckpointError(
            f"Checkpoint does not fit model {model.name!r}; nothing was loaded:\n  - "
            + "\n  - ".join(problems)
        )
    for key in expected:
        variables[key].assign(params[key].astype(variables[key].dtype))
        summary.loaded.append((key, params[key].shape))
    if verbose:
        for message in summary.messages:
            warnings.warn(message, stacklevel=3)
    return summary


def load_weights(model, weights, verbose=True):
    """Load ``weights`` into ``model``.

    Args:
        model: a Mixer model built by this package.
        weights: a preset name (``"imagenet1k"``, ``"imagenet21k"``, ``"sam"``,
            ``"gsam"``, ``"miil_in21k"``, ``"miil_in21k_ft_in1k"``, where published
            for the model's variant) or a path to an official ``.npz``, a timm
            ``.pth`` / ``.safetensors`` or a Keras ``.weights.h5`` file.
        verbose: emit the loader's messages (skipped head, resolution transfer)
            as warnings.

    Returns:
        A :class:`LoadSummary` (``None`` for ``.weights.h5`` files, which Keras loads).
    """
    if presets.is_preset_name(weights):
        preset = presets.get_preset(infer_variant(model), weights)
        _check_preset_fit(model, preset)
        weights = presets.download_preset(preset)
    path = os.fspath(weights)
    if _suffix(path, KERAS_SUFFIXES):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file not found: {path}")
        model.load_weights(path)
        return None
    if not os.path.isfile(path) and isinstance(weights, str) and os.sep not in path \
            and "." not in os.path.basename(path):
        raise ValueError(
            f"Unknown weights {weights!r}: not a file, and not a preset "
            f"({', '.join(presets.PRESET_NAMES)})."
        )
    return load_params(model, read_checkpoint(path), verbose=verbose)


def _check_preset_fit(model, preset):
    """Warn when the model's input scaling or GELU differ from the preset's training."""
    blocks = mixer_blocks(model)
    notes = []
    if preset.input_scaling == "miil" and any(l.name == "preprocessing" for l in model.layers):
        notes.append("expect pixels in [0, 1]: build with include_preprocessing=False and "
                     "feed keras_mixer.preprocess_input(x, mode='miil')")
    if blocks and blocks[0].approximate_gelu != preset.approximate_gelu:
        notes.append(f"were trained with approximate_gelu={preset.approximate_gelu}")
    if notes:
        warnings.warn(f"The {preset.name!r} weights " + "; ".join(notes) + ".", stacklevel=4)


# ---------------------------------------------------------------- saving


def save_weights(model, path):
    """Write the model's weights atomically.

    ``.npz``: the official Flax layout (loads in ``vit_jax``/big_vision);
    ``.safetensors`` / ``.pth``: the timm layout; ``.weights.h5``: Keras.
    """
    path = os.fspath(path)
    with atomic_output(path) as temp_path:
        if _suffix(path, KERAS_SUFFIXES):
            model.save_weights(temp_path, overwrite=True)
        elif _suffix(path, NPZ_SUFFIXES):
            with open(temp_path, "wb") as f:
                np.savez(f, **get_params(model))
        elif _suffix(path, SAFETENSORS_SUFFIXES):
            from safetensors.numpy import save_file

            save_file(to_timm(get_params(model)), temp_path)
        elif _suffix(path, TORCH_SUFFIXES):
            import torch

            state = {k: torch.from_numpy(v) for k, v in to_timm(get_params(model)).items()}
            torch.save(state, temp_path)
        else:
            raise ValueError(
                f"Unsupported output {path!r}: use .npz (official), .safetensors or .pth "
                "(timm) or .weights.h5 (Keras)."
            )
    return path


def model_from_checkpoint(path, image_size=None, verbose=True, **kwargs):
    """Build the Mixer a checkpoint file describes and load it.

    Args:
        path: ``.npz``, ``.pth`` or ``.safetensors`` checkpoint.
        image_size: build at this size (int or ``(height, width)``) with the
            paper's resolution transfer; default: the checkpoint's size.
        verbose: emit the loader's messages as warnings.
        **kwargs: other :func:`~keras_mixer.MlpMixer` arguments (``num_classes``,
            ``include_preprocessing``, ``approximate_gelu``, ...).

    Returns:
        ``(model, summary)``.
    """
    from keras_mixer.models import MlpMixer, model_name

    params = read_checkpoint(path)
    config = config_from_params(params)
    for name, variant in VARIANTS.items():
        if (variant.patch_size, variant.num_blocks, variant.hidden_dim) == (
                config["patch_size"], config["num_blocks"], config["hidden_dim"]):
            config["name"] = model_name(name)
    if image_size is not None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        source = check_image_shape(config["input_shape"], config["patch_size"])
        target_shape = (int(image_size[0]), int(image_size[1]), config["input_shape"][2])
        target = check_image_shape(target_shape, config["patch_size"])
        kh, kw = resolution.tiling_factors(source, target)
        config.update(input_shape=target_shape, tokens_mlp_dim=config["tokens_mlp_dim"] * kh * kw)
    config.update(kwargs)
    model = MlpMixer(**config)
    return model, load_params(model, params, verbose=verbose)


def build_model(weights, variant=None, image_size=None, verbose=True, **kwargs):
    """A Mixer with ``weights`` from any source, optionally moved to ``image_size``.

    Args:
        weights: a checkpoint file (``.npz``, ``.pth``, ``.safetensors``: the
            architecture is read off its shapes), a ``.keras`` model file, or a
            preset name / ``.weights.h5`` file together with ``variant``.
        variant: paper variant (``"B/16"``) for presets and ``.weights.h5`` files.
        image_size: int or ``(height, width)``; resolution transfer when it differs.
        verbose: emit the loader's messages as warnings.
        **kwargs: other :func:`~keras_mixer.MlpMixer` arguments.

    Returns:
        ``(model, summary)``; ``summary`` is ``None`` unless a checkpoint file was read.
    """
    from keras_mixer.models import get_model

    path = os.fspath(weights)
    if not presets.is_preset_name(path) and not _suffix(path, (".keras",) + KERAS_SUFFIXES):
        return model_from_checkpoint(path, image_size=image_size, verbose=verbose, **kwargs)
    if path.lower().endswith(".keras"):
        if kwargs:
            raise ValueError(f"A .keras file fixes the architecture; got extra arguments {kwargs}.")
        model = keras.saving.load_model(path)
    else:
        if variant is None:
            raise ValueError(f"Loading {path!r} needs the variant (e.g. variant='B/16').")
        model = get_model(variant, weights=path, **kwargs)
    if image_size is not None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if tuple(image_size) != tuple(model.input.shape[1:3]):
            model = resolution.convert_resolution(model, image_size)
    return model, None


def save_model_or_weights(model, path):
    """Write ``model`` to a ``.keras`` file or its weights to any :func:`save_weights` format."""
    path = os.fspath(path)
    if path.lower().endswith(".keras"):
        with atomic_output(path) as temp_path:
            model.save(temp_path)
        return path
    return save_weights(model, path)
