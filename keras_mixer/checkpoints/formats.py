"""Checkpoint files: official ``.npz``, timm ``.pth`` / ``.safetensors``, Keras ``.weights.h5``, as official-layout dicts.

Every reader returns ``{official key: NumPy array}`` and never unpickles:
``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``, safetensors, h5py.
A file that cannot be read raises :class:`CheckpointError` saying what the file is
(empty, text, a truncated archive, ...).
Writers take the same dict and write atomically.
"""

import json
import math
import os
import re
import zipfile
import zlib

import numpy as np

from keras_mixer.checkpoints import keys
from keras_mixer.files import atomic_output, describe_contents, format_bytes

NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIXES = (".safetensors",)
KERAS_WEIGHTS_SUFFIXES = (".weights.h5",)
KERAS_MODEL_SUFFIXES = (".keras",)
CHECKPOINT_SUFFIXES = NPZ_SUFFIXES + TORCH_SUFFIXES + SAFETENSORS_SUFFIXES


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model.

    Raised before anything is assigned. When the checkpoint does not fit, the
    error's ``problems`` attribute lists every bad key (the message the first few).

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> empty = os.path.join(tempfile.mkdtemp(), "empty.safetensors")
        >>> open(empty, "wb").close()
        >>> try:
        ...     keras_mixer.load_weights(model, empty)
        ... except keras_mixer.CheckpointError as error:
        ...     print(type(error).__name__, isinstance(error, ValueError))
        CheckpointError True
    """


def has_suffix(path, suffixes):
    """Whether ``path`` ends with one of ``suffixes`` (case-insensitive)."""
    return os.fspath(path).lower().endswith(suffixes)


def read_npz(path):
    """An official ``.npz`` checkpoint as a dict (Linen layout), without unpickling anything.

    Every array's header is checked against the bytes the archive holds for it
    before anything is read, so a damaged header is reported, not allocated.
    """
    description = describe_contents(path)
    if description.startswith("is a single NumPy array"):
        raise CheckpointError(f"{path} holds a single array, not an .npz archive of weights.")
    if not description.startswith("is a zip archive"):
        raise CheckpointError(
            f"Cannot read {path} as an .npz checkpoint: the file {description}; an .npz "
            "checkpoint is a zip archive of NumPy arrays."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_npy_member(path, archive, info)
        with np.load(path, allow_pickle=False) as data:
            params = {key: data[key] for key in data.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError) as error:
        raise CheckpointError(
            f"Cannot read {path} as an .npz archive: it is truncated or corrupt ({error})."
        ) from error
    return keys.from_legacy(params) if keys.is_legacy(params) else params


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}
# Deflate compresses at most about 1032:1 (zlib's technical details).
_MAX_DEFLATE_RATIO = 1032


def _check_npy_member(path, archive, info):
    """One array of an ``.npz``: a ``.npy`` of numbers whose header fits the bytes stored for it."""
    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            reader = _NPY_HEADER_READERS.get(version)
            if reader is None:
                return  # a newer .npy version: NumPy checks it when reading
            shape, _, dtype = reader(member)
        except ValueError as error:
            raise CheckpointError(
                f"Cannot read {path}: its member {info.filename!r} is not a NumPy array with "
                f"a valid header ({error}); the file is corrupt, or not an .npz checkpoint."
            ) from None
    if dtype.hasobject:
        raise CheckpointError(
            f"{path} contains pickled Python objects (array {name!r} has dtype object), which "
            "are never loaded (allow_pickle=False): a weights file holds numeric arrays only."
        )
    declared = math.prod(shape) * dtype.itemsize
    available = info.file_size
    if info.compress_type == zipfile.ZIP_STORED:
        available = min(available, info.compress_size)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        available = min(available, _MAX_DEFLATE_RATIO * info.compress_size + 1024)
    if declared > available:
        raise CheckpointError(
            f"Cannot read {path}: array {name!r} declares an array of {format_bytes(declared)} "
            f"(shape {tuple(shape)}, {dtype}) but the archive holds {format_bytes(available)} "
            "for it: corrupt header."
        )


KERAS_JSON_MEMBERS = ("config.json", "metadata.json")


def keras_archive_problem(path, error):
    """What makes the ``.keras`` archive ``path`` unloadable, given Keras' ``error``, or ``None``.

    A phrase for a :class:`CheckpointError`: a JSON member that does not parse (named),
    a class that is not Keras' or keras-mixer's (Keras' ``safe_mode`` does not locate
    it), or Python code (a ``Lambda``), which ``safe_mode`` never loads.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for member in KERAS_JSON_MEMBERS:
                if member in archive.namelist():
                    try:
                        json.loads(archive.read(member))
                    except (ValueError, UnicodeDecodeError) as bad:
                        return f"its member {member!r} is not valid JSON ({bad})"
    except (OSError, zipfile.BadZipFile, zlib.error):
        return None
    text = str(error)
    located = re.search(r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'", text)
    if isinstance(error, TypeError) and located:
        module = re.search(r"'module': '([^']+)'", text)
        where = f" (module {module.group(1)!r})" if module else ""
        return (f"it names the class {located.group(1)!r}{where}, which is not a Keras or keras-mixer "
                "class; only those are loaded (safe_mode)")
    if isinstance(error, ValueError) and "safe_mode" in text:
        return "it holds Python code (a lambda), which is never loaded (safe_mode)"
    return None


def _unreadable(path, how, error, hint="truncated or corrupt"):
    """A :class:`CheckpointError` saying what the file is, when it is not what its name says."""
    description = describe_contents(path)
    if description.startswith(("is a zip archive", "is not a known format")):
        description = hint  # the format looks right: the trouble is inside
    else:
        description = f"the file {description}"
    return CheckpointError(f"Cannot read {path} {how}: {description} ({error})")


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
        raise _unreadable(path, "with torch.load(weights_only=True)", error,
                          "truncated or corrupt, or it holds more than tensors") from error
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
        raise _unreadable(path, "as .safetensors", error) from error


def _h5_datasets(source, path):
    """``{dataset path: array}`` of an HDF5 file (a path or a file object)."""
    import h5py

    state = {}

    def collect(name, item):
        if isinstance(item, h5py.Dataset):
            state[name] = np.asarray(item[()])

    try:
        with h5py.File(source, "r") as f:
            f.visititems(collect)
    except (OSError, ValueError, KeyError) as error:
        raise _unreadable(path, "as a Keras weights file (HDF5)", error) from error
    return state


def read_keras_weights(path):
    """A Keras ``.weights.h5`` of an MlpMixer (any backend, any release) in the official layout.

    The file is read with h5py (installed with Keras) and mapped by
    :func:`keys.from_keras_weights`, so it is checked like any other checkpoint.
    """
    return keys.from_keras_weights(_h5_datasets(path, path))


# keras-mixer 0.1 and 0.2 kept each MLP's weights in the MlpBlock itself.
_OWN_MLP_WEIGHTS = re.compile(r".*/(token|channel)_mixing/vars/\d+")
_ARCHIVE_WEIGHTS = "model.weights.h5"


def _archive_member(path, read):
    """``read(config dict, weights file object)`` on a ``.keras`` zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            with archive.open(_ARCHIVE_WEIGHTS) as weights:
                return read(config, weights)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        problem = keras_archive_problem(path, error)
        if problem:
            raise CheckpointError(f"Cannot load {path}: {problem}.") from error
        raise _unreadable(path, "as a .keras model file", error) from error


def inspect_keras_archive(path):
    """``(config, legacy)``: a ``.keras`` file's ``config.json`` as a dict, and whether its MLPs
    keep the 0.1/0.2 layout (their own weights), read without loading any weight."""
    import h5py

    def read(config, weights):
        names = []
        with h5py.File(weights, "r") as f:
            f.visit(names.append)
        return config, any(_OWN_MLP_WEIGHTS.fullmatch(name) for name in names)

    return _archive_member(path, read)


def read_keras_archive(path):
    """The weights of a ``.keras`` file of any release, in the official layout."""
    return _archive_member(path, lambda config, weights: keys.from_keras_weights(
        _h5_datasets(weights, path)))


def sniff_format(path):
    """The checkpoint format the file's content shows (``".npz"``, ``".pth"``,
    ``".safetensors"``, ``".weights.h5"``), or ``None`` when it shows none of them."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if names and all(name.endswith(".npy") for name in names):
                return NPZ_SUFFIXES[0]
            if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
                return TORCH_SUFFIXES[0]
            return None
    except (OSError, zipfile.BadZipFile):
        return None
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return KERAS_WEIGHTS_SUFFIXES[0]
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return TORCH_SUFFIXES[0]  # a legacy (non-zip) torch.save
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 2 ** 20:
        return SAFETENSORS_SUFFIXES[0]  # an 8-byte header length, then the JSON header
    return None


def read_checkpoint(path):
    """Any supported checkpoint file as an official-layout dict of NumPy arrays.

    The file's name picks the reader, unless its content is clearly another
    supported format (an ``.npz`` renamed ``.pth``, ...): then that one reads it.
    """
    path = os.fspath(path)
    readers = ((NPZ_SUFFIXES, read_npz),
               (TORCH_SUFFIXES, lambda p: keys.from_timm(read_torch(p))),
               (SAFETENSORS_SUFFIXES, lambda p: keys.from_timm(read_safetensors(p))),
               (KERAS_WEIGHTS_SUFFIXES, read_keras_weights))
    for suffixes, reader in readers:
        if has_suffix(path, suffixes):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            content = sniff_format(path)
            if content is not None and content not in suffixes:
                reader = next(read for kinds, read in readers if content in kinds)
            return reader(path)
    raise ValueError(
        f"Unsupported weights {path!r}: expected a preset name, or a .npz (official), "
        ".pth or .safetensors (timm) or .weights.h5 (Keras) file."
    )


def write_checkpoint(params, path):
    """Write official-layout ``params`` atomically: ``.npz`` (official) or ``.safetensors`` / ``.pth`` (timm)."""
    path = os.fspath(path)
    if not has_suffix(path, CHECKPOINT_SUFFIXES):
        raise ValueError(
            f"Unsupported output {path!r}: use .npz (official), .safetensors or .pth "
            "(timm) or .weights.h5 (Keras)."
        )
    with atomic_output(path) as temp_path:
        if has_suffix(path, NPZ_SUFFIXES):
            with open(temp_path, "wb") as f:
                np.savez(f, **params)
        elif has_suffix(path, SAFETENSORS_SUFFIXES):
            from safetensors.numpy import save_file

            save_file(keys.to_timm(params), temp_path)
        else:
            import torch

            torch.save({k: torch.from_numpy(v) for k, v in keys.to_timm(params).items()}, temp_path)
    return path
