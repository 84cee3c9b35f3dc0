"""keras-mixer: MLP-Mixer (Tolstikhin et al., 2021) for Keras 3 on JAX, TensorFlow and PyTorch.

``import keras_mixer`` loads Keras and the model (layers, models, checkpoints), which
registers the Mixer's classes so that ``keras.saving.load_model`` reads its
``.keras`` files. Training, export, serving clients and the rest load on first use
(``keras_mixer.train``, ``keras_mixer.export_saved_model``, ...), with the extras
that they need installed (see the install guide).
"""

__version__ = "0.3.0"

import importlib

from keras_mixer import startup

startup.apply()  # the command line's --backend and quiet start-up, before Keras loads

# Loaded on first use: name -> module.
_LAZY = {
    **dict.fromkeys(("GrpcClient", "InvalidInputError", "ModelNotFoundError", "Prediction",
                     "RestClient", "ServerUnavailableError", "ServingError", "make_client"),
                    "keras_mixer.deploy.client"),
    "export_saved_model": "keras_mixer.deploy.saved_model",
    "export_tflite": "keras_mixer.deploy.tflite",
    "export_onnx": "keras_mixer.deploy.onnx",
    **dict.fromkeys(("TrainConfig", "WarmupLinearDecay", "train"), "keras_mixer.training"),
}
_MODEL_API = {
    "keras_mixer.checkpoints": ("CheckpointError", "DownloadError", "LoadSummary",
                                "available_presets", "load_params", "load_weights", "preset_names",
                                "save_weights"),
    "keras_mixer.config": ("VARIANTS", "MixerConfig", "ModelConfig", "canonical_variant", "flops",
                           "parameter_count"),
    "keras_mixer.imagenet": ("decode_predictions", "preprocess_input"),
    "keras_mixer.layers": ("DropPath", "MixerBlock", "MlpBlock", "PatchEmbedding"),
    "keras_mixer.models": ("MixerB16", "MixerB32", "MixerH14", "MixerL16", "MixerL32", "MixerS16",
                           "MixerS32", "MlpMixer", "convert_resolution", "feature_extractor",
                           "get_model", "load_model", "mixer_blocks", "model_from_checkpoint"),
    "keras_mixer.sharing": ("save_to_preset",),
}
_LAZY.update({name: module for module, names in _MODEL_API.items() for name in names})
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_mixer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if not startup.is_command():
    # A library user gets the model at once (and Keras can deserialize it); a `keras-mixer`
    # command imports what it runs, so that `keras-mixer --help` starts without Keras.
    for _module, _names in _MODEL_API.items():
        for _name in _names:
            __getattr__(_name)
    del _module, _names, _name
