"""keras-mixer: MLP-Mixer (Tolstikhin et al., 2021) for Keras 3 on JAX, TensorFlow and PyTorch."""

__version__ = "0.2.0"

from keras_mixer import startup

startup.apply()  # the command line's --backend and quiet start-up, before Keras loads


from keras_mixer.checkpoints import (
    CheckpointError,
    DownloadError,
    LoadSummary,
    available_presets,
    load_params,
    load_weights,
    preset_names,
    save_weights,
)
from keras_mixer.config import VARIANTS, MixerConfig, ModelConfig, canonical_variant, flops
from keras_mixer.imagenet import decode_predictions, preprocess_input
from keras_mixer.layers import DropPath, MixerBlock, MlpBlock, PatchEmbedding
from keras_mixer.models import (
    MixerB16,
    MixerB32,
    MixerH14,
    MixerL16,
    MixerL32,
    MixerS16,
    MixerS32,
    MlpMixer,
    convert_resolution,
    feature_extractor,
    get_model,
    load_model,
    mixer_blocks,
    model_from_checkpoint,
)
from keras_mixer.sharing import save_to_preset
from keras_mixer.deploy import (
    GrpcClient,
    InvalidInputError,
    ModelNotFoundError,
    Prediction,
    RestClient,
    ServerUnavailableError,
    ServingError,
    export_onnx,
    export_saved_model,
    export_tflite,
    make_client,
)
from keras_mixer.training import TrainConfig, WarmupLinearDecay, train
