"""Checkpoint files: official ``.npz``, timm ``.pth`` / ``.safetensors``, as official-layout dicts.

Every reader returns ``{official key: NumPy array}`` and never unpickles:
``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``, safetensors.
Writers take the same dict and write atomically.
"""

import os
import zipfile
import zlib

import numpy as np

from keras_mixer.checkpoints import keys
from keras_mixer.files import atomic_output

NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIXES = (".safetensors",)
KERAS_WEIGHTS_SUFFIXES = (".weights.h5",)
KERAS_MODEL_SUFFIXES = (".keras",)
CHECKPOINT_SUFFIXES = NPZ_SUFFIXES + TORCH_SUFFIXES + SAFETENSORS_SUFFIXES


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


def has_suffix(path, suffixes):
    """Whether ``path`` ends with one of ``suffixes`` (case-insensitive)."""
    return os.fspath(path).lower().endswith(suffixes)


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
    return keys.from_legacy(params) if keys.is_legacy(params) else params


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
    readers = ((NPZ_SUFFIXES, read_npz),
               (TORCH_SUFFIXES, lambda p: keys.from_timm(read_torch(p))),
               (SAFETENSORS_SUFFIXES, lambda p: keys.from_timm(read_safetensors(p))))
    for suffixes, reader in readers:
        if has_suffix(path, suffixes):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
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
