"""Presets for tests, offline: timm's Hugging Face layout and the Hugging Face cache, built here."""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
from helpers import reference
from helpers.tiny import TINY

import keras_mixer
from keras_mixer import checkpoints

NUM_CLASSES = 5
SIZE = 32  # TINY: patch 8, 16 tokens, width 32
# timm's pretrained_cfg of its Mixers (timm/models/mlp_mixer.py): Google's weights, and MIIL's.
GOOG = dict(interpolation="bicubic", crop_pct=0.875, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
MIIL = dict(interpolation="bilinear", crop_pct=0.875, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
REPO = "timm/mixer_tiny_test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_params(seed=0, num_classes=NUM_CLASSES):
    """Random official-layout weights of the tiny Mixer (non-trivial LayerNorms and head)."""
    return reference.random_params(TINY["patch_size"], 3, TINY["hidden_dim"], 16, TINY["tokens_mlp_dim"],
                                   TINY["channels_mlp_dim"], TINY["num_blocks"], num_classes, seed)


def write_timm_repository(folder, params, pretrained=GOOG, weights="safetensors", label_names=None):
    """The files timm's ``save_for_hf`` writes for a custom-sized mixer_b16_224 (timm's layout)."""
    os.makedirs(folder, exist_ok=True)
    config = {
        "architecture": "mixer_b16_224", "num_classes": NUM_CLASSES, "num_features": TINY["hidden_dim"],
        "global_pool": "avg",
        "model_args": {"patch_size": TINY["patch_size"], "num_blocks": TINY["num_blocks"],
                       "embed_dim": TINY["hidden_dim"], "img_size": SIZE},
        "pretrained_cfg": {"tag": "test", "custom_load": False, "input_size": [3, SIZE, SIZE],
                           "fixed_input_size": True, "crop_mode": "center", "num_classes": NUM_CLASSES,
                           "pool_size": None, "first_conv": "stem.proj", "classifier": "head",
                           **pretrained},
    }
    if label_names:
        config["label_names"] = label_names
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    state = checkpoints.to_timm(params)
    if weights == "safetensors":
        from safetensors.numpy import save_file

        save_file(state, os.path.join(folder, "model.safetensors"))
    else:
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()},
                   os.path.join(folder, "pytorch_model.bin"))
    return str(folder)


def hf_cache(root, repo_id, folder):
    """``folder``'s files as ``repo_id`` at :data:`COMMIT` in the Hugging Face cache layout.

    Weights are stored as Git LFS files are (``blobs/<sha256>``), the rest under their
    git blob hash; ``snapshots/<commit>/`` links to the blobs, ``refs/main`` names the commit.
    """
    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", COMMIT)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        if name.endswith((".safetensors", ".bin", ".h5")):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        with open(os.path.join(repo, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(COMMIT)
    return repo


def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub offline on a cache in ``tmp_path`` (as HF_HUB_OFFLINE=1 HF_HUB_CACHE=... do)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return str(cache)


def timm_reference(params, pixels, pretrained):
    """What timm computes: its forward (exact GELU) on pixels normalised as pretrained_cfg says."""
    mean, std = np.asarray(pretrained["mean"]), np.asarray(pretrained["std"])
    return reference.timm_forward(checkpoints.to_timm(params), (pixels / 255.0 - mean) / std,
                                  approximate="none")


def predict(model, pixels):
    return keras.ops.convert_to_numpy(model(pixels, training=False))


def tiny_mixer(**kwargs):
    """The tiny Mixer with random weights and a non-default image policy."""
    kwargs = dict(dict(input_shape=(SIZE, SIZE, 3), num_classes=NUM_CLASSES, interpolation="bicubic",
                       crop_fraction=0.875, input_mean=(0.4, 0.5, 0.6), input_std=(0.2, 0.3, 0.25),
                       classifier_activation=None, name="tiny_mixer"), **kwargs)
    model = keras_mixer.MlpMixer(**TINY, **kwargs)
    checkpoints.load_params(model, tiny_params(num_classes=kwargs["num_classes"]))
    return model
