"""Train the tiny Mixer for a few steps under a distribution strategy; save the final weights.

Run in a fresh process (device counts are fixed at import):
  KERAS_BACKEND=... python -m workers.training_worker STRATEGY CPU_DEVICES RECIPE OUT.npz [MODEL_PARALLEL]
The data are fixed random images; every process reads the same global batches
(torch: its own shard of them), with no shuffling or augmentation. Multi-process:
started as several processes by TF_CONFIG (tensorflow), the KERAS_DISTRIBUTION_* variables
(jax) or torchrun.
"""

import sys

import numpy as np
import tensorflow as tf

import keras
from keras_mixer import data, distribute, training
from helpers.tiny import TINY

GLOBAL_BATCH, STEPS = 8, 3


def main(strategy, cpu_devices, recipe, out, model_parallel="0"):
    dist = distribute.setup_distribution(strategy, int(cpu_devices), int(model_parallel))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (GLOBAL_BATCH * STEPS, 32, 32, 3)).astype("uint8")
    labels = rng.integers(0, 10, GLOBAL_BATCH * STEPS)
    source = data.Source(tf.data.Dataset.from_tensor_slices((images, labels)).shard(*dist.shard),
                         len(labels) // dist.shard[0], [str(i) for i in range(10)])
    dataset = data.make_dataset(source, dist.pipeline_batch_size(GLOBAL_BATCH), 32,
                                training=False, drop_remainder=True)
    config = training.TrainConfig(**{**TINY, "variant": "custom", "image_size": 32},
                                  recipe=recipe, learning_rate=0.05, warmup_epochs=0.0,
                                  weight_decay=0.1)
    with dist.scope():
        model = training.build_model(config, 10)
        training.compile_model(model, config, total_steps=10, warmup_steps=0)
    dist.prepare_model(model)
    model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    # Every process reads the weights (multi-process JAX: global arrays); the chief saves them.
    arrays = [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]
    if dist.is_chief:
        np.savez(out, *arrays)
    print(f"done {dist.name} replicas={dist.replicas}")


if __name__ == "__main__":
    main(*sys.argv[1:])
