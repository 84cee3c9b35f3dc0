"""Reading and writing Mixer weights; never imports the model code.

- :mod:`.keys`: official names <-> model variables, legacy and timm layouts;
- :mod:`.formats`: ``.npz`` / ``.pth`` / ``.safetensors`` / ``.weights.h5`` files to and from official-layout dicts;
- :mod:`.tiling`: the block-diagonal resolution transfer on arrays;
- :mod:`.presets`: the published checkpoints, downloaded into the Keras cache and checked;
- :mod:`.hub`: handles (preset names, folders, ``hf://``, ``kaggle://``) and the preset layouts;
- :mod:`.loading`: the loading rules (check everything, then assign).
"""

from keras_mixer.checkpoints.formats import CheckpointError, read_checkpoint
from keras_mixer.checkpoints.hub import Source, is_handle, read_source
from keras_mixer.checkpoints.keys import HEAD_KEYS, from_timm, get_params, to_timm
from keras_mixer.checkpoints.loading import (
    LoadSummary,
    config_from_params,
    load_params,
    load_weights,
    save_weights,
    source_config,
    weights_defaults,
)
from keras_mixer.checkpoints.presets import DownloadError, available_presets, preset_names
