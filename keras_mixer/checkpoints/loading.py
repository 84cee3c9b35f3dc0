"""The loading rules: check a whole checkpoint against a model, then assign it, or nothing.

The same rules for every format (``.npz``, ``.pth``, ``.safetensors``, Keras
``.weights.h5``), all read into the official layout first (:mod:`.formats`).

As the official loader: a head of another size is skipped with a message and
stays zero-initialised; a model without head ignores the checkpoint's head;
anything else missing, unexpected or of the wrong shape is an error naming the
key and both shapes, raised before anything is assigned. A checkpoint trained on
a smaller token grid loads into a model whose grid is an integer multiple of it
and whose ``tokens_mlp_dim`` is multiplied accordingly (:mod:`.tiling`).
"""

import dataclasses
import os
import warnings

import numpy as np

from keras_mixer.checkpoints import formats, hub, keys, presets, tiling
from keras_mixer.checkpoints.formats import CheckpointError, has_suffix
from keras_mixer.config import (
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    ModelConfig,
    model_name,
    per_channel,
    variant_of,
)
from keras_mixer.files import atomic_output

MAX_LISTED_PROBLEMS = 6


@dataclasses.dataclass
class LoadSummary:
    """What :func:`load_params` did; ``str(summary)`` says it in words.

    Args:
        loaded: ``(key, shape)`` of every tensor assigned, official key names.
        skipped: keys of the checkpoint left out (a head of another size).
        messages: what the loader said (skipped head, resolution transfer).
        tiling: ``(rows, columns)`` of the resolution transfer; ``(1, 1)``: none.
        class_names: the head's class names, when the weights' source names them.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> params = keras_mixer.checkpoints.get_params(model)
        >>> other = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3), num_classes=3)
        >>> summary = keras_mixer.load_params(other, params, verbose=False)
        >>> print(summary)
        Loaded 28 tensors (15,968 values).
        Skipped the checkpoint's head: 10 classes, the model has 3; the head stays freshly (zero) initialised.
        >>> summary.skipped, summary.loaded[0]
        (['head/kernel', 'head/bias'], ('stem/kernel', (8, 8, 3, 32)))
    """

    loaded: list
    skipped: list = dataclasses.field(default_factory=list)
    messages: list = dataclasses.field(default_factory=list)
    tiling: tuple = (1, 1)
    class_names: list = None  # the head's class names, when the weights' source names them

    @property
    def num_values(self):
        """How many numbers were assigned (the sum of the loaded shapes' sizes)."""
        return int(sum(np.prod(shape) for _, shape in self.loaded))

    def __str__(self):
        lines = [f"Loaded {len(self.loaded)} tensors ({self.num_values:,} values)."]
        if not any(key.startswith("head/") for key, _ in self.loaded) and not self.skipped:
            lines.append("No classification head in the model (include_top=False).")
        return "\n".join(lines + self.messages)


def config_from_params(params, **overrides):
    """The :class:`~keras_mixer.config.ModelConfig` a checkpoint describes, read off its shapes.

    The image size follows from the token count (a square grid); the head from
    ``head/kernel`` (none: ``include_top=False``). ``overrides`` replace fields.
    """
    try:
        stem = params["stem/kernel"]
        tokens = params[keys.TOKEN_KERNEL_KEY]
        channels = params["MixerBlock_0/channel_mixing/Dense_0/kernel"]
    except KeyError as error:
        raise CheckpointError(f"Not a Mixer checkpoint: no {error.args[0]!r}.") from None
    if np.ndim(stem) != 4 or np.ndim(tokens) != 2 or np.ndim(channels) != 2:
        raise CheckpointError("Not a Mixer checkpoint: its stem or MLP kernels have the wrong rank.")
    grid = tiling.square_grid(tokens.shape[0])
    fields = dict(
        patch_size=int(stem.shape[0]),
        num_blocks=keys.num_blocks(params),
        hidden_dim=int(stem.shape[3]),
        tokens_mlp_dim=int(tokens.shape[1]),
        channels_mlp_dim=int(channels.shape[1]),
        image_shape=(grid[0] * int(stem.shape[0]), grid[1] * int(stem.shape[1]), int(stem.shape[2])),
    )
    if "head/kernel" in params:
        fields["num_classes"] = int(params["head/kernel"].shape[1])
    else:
        fields["include_top"] = False
    variant = variant_of(ModelConfig(**fields))
    if variant:
        fields["name"] = model_name(variant)
    fields.update(overrides)
    return ModelConfig(**fields)


# What a model built for a weights source takes from it by default (keras_mixer.get_model with
# weights=): the GELU and input normalisation the weights were trained with, the image policy
# they were evaluated with, and their head.
DEFAULT_FIELDS = ("approximate_gelu", "layer_norm_epsilon", "crop_fraction", "interpolation",
                  "input_mean", "input_std", "num_classes")


def source_config(source, **overrides):
    """The :class:`ModelConfig` of a :class:`~keras_mixer.checkpoints.hub.Source`, plus ``overrides``."""
    return config_from_params(source.params, **{**source.fields, **overrides})


def weights_defaults(weights, variant=None, fields=DEFAULT_FIELDS):
    """The model arguments ``weights`` (a preset name or handle) were trained and evaluated with.

    ``{}`` for files, which say nothing of it. A handle's files are downloaded (and
    only its config files read).
    """
    if presets.is_preset_name(weights) and variant is not None:
        known = presets.get_preset(variant, weights).config_fields
    elif hub.is_handle(weights):
        source = hub.read_source(weights, weights=False)
        known = dict(source.fields)
        if not known.get("include_top", True):
            known.pop("num_classes", None)
    else:
        return {}
    return {key: known[key] for key in fields if key in known}


def _head_plan(variables, params, messages):
    """Split off a checkpoint head the model cannot take.

    Returns the params to load and the model's keys that keep their initial values.
    """
    params = dict(params)
    ckpt_head = {k: params.pop(k) for k in keys.HEAD_KEYS if k in params}
    if "head/kernel" not in variables:
        return params, ()  # include_top=False: the head is not part of the model
    if not ckpt_head:
        messages.append("The checkpoint has no head: the head stays freshly (zero) initialised.")
        return params, keys.HEAD_KEYS
    kernel, bias = ckpt_head.get("head/kernel"), ckpt_head.get("head/bias")
    width, classes = tuple(variables["head/kernel"].shape)
    if (kernel is not None and bias is not None and kernel.ndim == 2
            and kernel.shape[0] == width and kernel.shape[1] != classes
            and bias.shape == (kernel.shape[1],)):
        messages.append(
            f"Skipped the checkpoint's head: {kernel.shape[1]} classes, the model has "
            f"{classes}; the head stays freshly (zero) initialised."
        )
        return params, keys.HEAD_KEYS
    params.update(ckpt_head)  # same size, or malformed: checked with everything else
    return params, ()


def _architecture_difference(model, params):
    """A sentence naming both architectures when the checkpoint's patch, depth or widths differ."""
    try:
        ckpt = config_from_params(params)
    except (CheckpointError, ValueError):
        return None  # not readable as a whole: the key-by-key check says what is wrong
    ours = model.config
    differ = [f for f in ("patch_size", "num_blocks", "hidden_dim", "channels_mlp_dim")
              if getattr(ckpt, f) != getattr(ours, f)]
    if not differ:
        return None
    return (f"The checkpoint is a {ckpt.architecture.describe()} trained at "
            f"{ckpt.image_size[0]}x{ckpt.image_size[1]}; the model is a "
            f"{ours.architecture.describe()} (they differ in {', '.join(differ)}). To use the "
            "checkpoint's architecture, build it with keras_mixer.model_from_checkpoint(path).")


def _transfer_resolution(model, variables, params, summary):
    """Block-diagonal token mixing when the model's grid is a multiple of the checkpoint's."""
    key = keys.TOKEN_KERNEL_KEY
    if key not in params or key not in variables:
        return params
    ckpt_tokens, ckpt_hidden = np.shape(params[key])
    model_tokens, model_hidden = tuple(variables[key].shape)
    if ckpt_tokens == model_tokens:
        return params
    patch = model.config.patch_size
    target_grid = model.config.grid
    source_grid = tiling.square_grid(ckpt_tokens)
    side = source_grid[0] * patch
    try:
        kh, kw = tiling.tiling_factors(source_grid, target_grid)
    except ValueError as error:
        raise CheckpointError(
            f"The checkpoint was trained on {side}x{side} images (patch {patch}). {error}"
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
    return tiling.expand_token_mixing(params, source_grid, target_grid)


def _shape_name(shape):
    return "(" + ", ".join(str(int(d)) for d in shape) + (",)" if len(shape) == 1 else ")")


def _problems(variables, params, expected):
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
    for key in sorted(params):  # the same order whatever the file format
        if key not in variables:
            problems.append(f"unexpected key {key!r} (checkpoint shape "
                            f"{_shape_name(params[key].shape)})")
    return problems


def load_params(model, params, verbose=True):
    """Assign official-layout ``params`` to ``model`` after checking all of them.

    Args:
        model: a ``keras_mixer.MlpMixer``.
        params: ``{official key: array}`` (``"stem/kernel"``,
            ``"MixerBlock_0/token_mixing/Dense_0/kernel"``, ...), as
            :func:`~keras_mixer.checkpoints.get_params` returns them and
            :mod:`~keras_mixer.checkpoints.formats` reads them from files.
        verbose: emit the loader's messages (skipped head, resolution transfer)
            as warnings.

    Returns:
        A :class:`LoadSummary`.

    Raises:
        CheckpointError: the parameters do not fit (naming the architectures, or
            each bad key with both shapes), raised before anything is assigned;
            the error's ``problems`` attribute lists every bad key.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> params = keras_mixer.checkpoints.get_params(model)
        >>> copy = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> print(keras_mixer.load_params(copy, params))
        Loaded 30 tensors (16,298 values).
        >>> wider = keras_mixer.MlpMixer(8, 2, 48, 16, 64, input_shape=(32, 32, 3))
        >>> try:
        ...     keras_mixer.load_params(wider, params)
        ... except keras_mixer.CheckpointError as error:
        ...     print(len(error.problems), "problems, the first:", error.problems[0])
        20 problems, the first: wrong shape for 'stem/kernel': checkpoint (8, 8, 3, 32), model (8, 8, 3, 48)
    """
    variables = keys.model_variables(model)
    params = {k: np.asarray(v) for k, v in params.items()}
    architecture = _architecture_difference(model, params)
    messages = []
    params, keep_init = _head_plan(variables, params, messages)
    summary = LoadSummary(loaded=[], skipped=list(keep_init), messages=messages)
    if architecture is None:  # the same architecture, maybe on a smaller token grid
        params = _transfer_resolution(model, variables, params, summary)

    expected = [k for k in variables if k not in keep_init]
    problems = _problems(variables, params, expected)
    if problems:
        raise _misfit_error(model, architecture, problems)
    for key in expected:
        variables[key].assign(params[key])
        summary.loaded.append((key, params[key].shape))
    if verbose:
        for message in summary.messages:
            warnings.warn(message, stacklevel=3)
    return summary


def _misfit_error(model, architecture, problems):
    """The architectures (when they differ) and the first few bad keys; ``.problems`` has all."""
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    lines = ([architecture] if architecture else []) + [
        f"Checkpoint does not fit model {model.name!r}; nothing was loaded:"]
    lines += [f"  - {problem}" for problem in shown]
    if more:
        lines.append(f"  ... and {more} more (all of them: the error's .problems)")
    error = CheckpointError("\n".join(lines))
    error.problems = problems
    return error


def load_weights(model, weights, verbose=True):
    """Load ``weights`` into ``model``, all of them or nothing.

    Args:
        model: a ``keras_mixer.MlpMixer``.
        weights: a preset name (``"imagenet1k"``, ``"imagenet21k"``, ``"sam"``,
            ``"gsam"``, ``"miil_in21k"``, ``"miil_in21k_ft_in1k"``, where published
            for the model's variant), a handle (a full preset name such as
            ``"mixer_b16_224.goog_in21k_ft_in1k"``, ``hf://OWNER/REPO``,
            ``kaggle://...``, a preset folder: :mod:`keras_mixer.checkpoints.hub`) or
            a path to an official ``.npz``, a timm ``.pth`` / ``.safetensors`` or a
            Keras ``.weights.h5`` file (saved on any backend). Every format goes
            through the same rules (:func:`load_params`).
        verbose: emit the loader's messages (skipped head, resolution transfer)
            as warnings.

    Returns:
        A :class:`LoadSummary`.

    Raises:
        CheckpointError: the file cannot be read or does not fit the model
            (nothing is assigned then).
        DownloadError: a preset's download failed.
        ValueError: ``weights`` is not a file, a folder, a handle or a preset
            published for the model's variant.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> path = keras_mixer.save_weights(model, os.path.join(tempfile.mkdtemp(), "tiny.npz"))
        >>> copy = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> print(keras_mixer.load_weights(copy, path))
        Loaded 30 tensors (16,298 values).
        >>> notes = os.path.join(tempfile.mkdtemp(), "notes.npz")
        >>> with open(notes, "w") as f:
        ...     _ = f.write("not weights")
        >>> try:
        ...     keras_mixer.load_weights(copy, notes)
        ... except keras_mixer.CheckpointError as error:
        ...     print(error)
        Cannot read .../notes.npz as an .npz checkpoint: the file is a text file (it starts with 'not weights'); an .npz checkpoint is a zip archive of NumPy arrays.
    """
    if hub.is_handle(weights):
        source = hub.read_source(weights)
        check_fit(model, source.fields, repr(source.handle))
        summary = load_params(model, source.params, verbose=verbose)
        summary.class_names = source.class_names
        return summary
    preset = None
    if presets.is_preset_name(weights):
        preset = presets.get_preset(_variant(model), weights)
        _check_preset_fit(model, preset)
        weights = presets.download_preset(preset)
    path = os.fspath(weights)
    if not os.path.isfile(path) and isinstance(weights, str) and os.sep not in path \
            and "." not in os.path.basename(path):
        raise ValueError(
            f"Unknown weights {weights!r}: not a file or folder, and not a preset "
            f"({', '.join(presets.PRESET_NAMES + tuple(presets.NAMED_PRESETS))})."
        )
    try:
        params = formats.read_checkpoint(path)
    except CheckpointError as error:
        if preset is None:
            raise
        raise CheckpointError(f"{error}\nThis is the cached download of the {preset.name!r} "
                              f"weights: delete {path} and it is downloaded again.") from error
    return load_params(model, params, verbose=verbose)


def _variant(model):
    variant = model.config.variant
    if variant is None:
        raise ValueError(
            f"Weights presets exist for the paper variants only; model {model.name!r} is a "
            f"{model.config.architecture.describe()}. Pass a checkpoint file instead."
        )
    return variant


def check_fit(model, fields, what, stacklevel=4):
    """Warn when the model's input normalisation or GELU differ from what the weights were trained with.

    ``fields``: :class:`~keras_mixer.config.ModelConfig` fields of the weights' source
    (``approximate_gelu``, ``input_mean``, ``input_std``); ``what`` names the weights.
    """
    notes = []
    channels = model.config.image_shape[2]
    mean = per_channel("input_mean", fields.get("input_mean", OFFICIAL_MEAN), channels)
    std = per_channel("input_std", fields.get("input_std", OFFICIAL_STD), channels)
    if model.config.include_preprocessing and (mean, std) != (model.config.input_mean,
                                                              model.config.input_std):
        scaled = ""
        if len(set(mean)) == len(set(std)) == 1:
            scaled = f"pixels in [{-mean[0] / std[0] + 0.0:g}, {(1.0 - mean[0]) / std[0]:g}] "
        notes.append(f"expect {scaled}(mean {mean}, std {std} of [0, 1] pixels): build the "
                     f"model with input_mean={mean}, input_std={std}")
    gelu = fields.get("approximate_gelu")
    if gelu is not None and model.config.approximate_gelu != gelu:
        notes.append(f"were trained with approximate_gelu={gelu}")
    if notes:
        warnings.warn(f"The {what} weights " + "; ".join(notes) + ".", stacklevel=stacklevel)


def _check_preset_fit(model, preset):
    check_fit(model, preset.config_fields, repr(preset.name), stacklevel=5)


def save_weights(model, path):
    """Write the model's weights atomically (a temporary file, then a rename).

    ``.npz``: the official Flax layout (loads in ``vit_jax``/big_vision);
    ``.safetensors`` / ``.pth``: the timm layout; ``.weights.h5``: Keras.

    Args:
        model: a ``keras_mixer.MlpMixer``.
        path: the file to write; its suffix picks the format.

    Returns:
        ``path`` (as a string).

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> folder = tempfile.mkdtemp()
        >>> for name in ("tiny.npz", "tiny.safetensors", "tiny.weights.h5"):
        ...     path = keras_mixer.save_weights(model, os.path.join(folder, name))
        >>> sorted(os.listdir(folder))
        ['tiny.npz', 'tiny.safetensors', 'tiny.weights.h5']
        >>> keras_mixer.load_model(os.path.join(folder, "tiny.safetensors")).config.num_classes
        10
    """
    path = os.fspath(path)
    if has_suffix(path, formats.KERAS_WEIGHTS_SUFFIXES):
        with atomic_output(path) as temp_path:
            model.save_weights(temp_path, overwrite=True)
        return path
    return formats.write_checkpoint(keys.get_params(model), path)
