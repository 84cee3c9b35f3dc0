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

# Performance (issue 6): FLOP count used by scripts/benchmark.py
from keras_mixer.benchmark import flops  # noqa: E402
