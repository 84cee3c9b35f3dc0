"""keras-mixer: MLP-Mixer (Tolstikhin et al., 2021) for Keras 3 on JAX, TensorFlow and PyTorch."""

from keras_mixer.layers import DropPath, MixerBlock, MlpBlock, PatchEmbedding
from keras_mixer.models import (
    VARIANTS,
    MixerB16,
    MixerB32,
    MixerConfig,
    MixerH14,
    MixerL16,
    MixerL32,
    MixerS16,
    MixerS32,
    MlpMixer,
    canonical_variant,
    feature_extractor,
    get_model,
    mixer_blocks,
)
from keras_mixer.weights import load_weights

__version__ = "0.1.0"

# Pretrained weights, resolution transfer, ImageNet pre/post-processing, visualization (issue 3)
from keras_mixer.imagenet import decode_predictions, preprocess_input
from keras_mixer.presets import available_presets
from keras_mixer.resolution import convert_resolution
from keras_mixer.weights import CheckpointError, load_params, model_from_checkpoint, save_weights
# Export and serving (issue 5): SavedModel / TFLite / ONNX export and TF Serving clients.
from keras_mixer.export import export_onnx, export_saved_model, export_tflite  # noqa: E402
from keras_mixer.serving import GrpcClient, Prediction, RestClient, ServingError, make_client  # noqa: E402
# Training (issue 4): tf.data pipelines, distribution per backend, model.fit recipes.
from keras_mixer.training import TrainConfig, WarmupLinearDecay, train  # noqa: E402
# Performance (issue 6): FLOP count used by scripts/benchmark.py
from keras_mixer.benchmark import flops  # noqa: E402
