"""How much a reduced-precision policy changes a Mixer's outputs, on fixed inputs.

The same random-weight Mixer (a random head too: the zero-initialised one gives
all-zero logits) runs in float32 and under the Keras dtype policy of the row
(``bfloat16``) on the same seeded images; :func:`keras_mixer.models.drift`
compares the logits: top-1 agreement and relative error.
"""

import dataclasses

import keras
import numpy as np

from keras_mixer import models
from keras_mixer.config import as_architecture


def precision_drift(config, image_size=224, num_classes=1000, dtype="bfloat16", num_images=8,
                    seed=0, batch_size=8):
    """``{"dtype", "top1_agreement", "relative_error", "max_abs_error", "num_images"}``.

    ``config`` is an architecture (a :class:`~keras_mixer.config.MixerConfig` or a
    variant name); runs on the current Keras backend.
    """
    keras.utils.set_random_seed(seed)
    reference = models.MlpMixer(**dataclasses.asdict(as_architecture(config)), num_classes=num_classes,
                                input_shape=(image_size, image_size, 3),
                                classifier_activation=None, dtype="float32")
    rng = np.random.default_rng(seed)
    head = reference.head.kernel
    head.assign(rng.standard_normal(head.shape).astype("float32") / np.sqrt(head.shape[0]))
    images = rng.uniform(0, 255, (num_images, image_size, image_size, 3)).astype("float32")
    candidate = models.with_dtype(reference, dtype)
    expected, actual = (model.predict(images, batch_size=batch_size, verbose=0)
                        for model in (reference, candidate))
    return dict(dtype=dtype, **models.drift(expected, actual))
