"""Train the tiny Mixer for a few steps under a distribution strategy; save the final weights.

Run in a fresh process (device counts are fixed at import):
  KERAS_BACKEND=... python -m workers.training_worker STRATEGY CPU_DEVICES RECIPE OUT.npz [MODEL_PARALLEL]
The data are fixed random images, as PNG files in an image folder beside OUT; no
shuffling or augmentation. Each process reads and decodes only its own shard of the
files, and its part of every global batch. Multi-process: started as several
processes by TF_CONFIG (tensorflow), the KERAS_DISTRIBUTION_* variables (jax) or torchrun.
Prints ``decoded=N``: the images this process decoded (the bad-image check and the pipeline).
"""

import os
import sys

import numpy as np

import keras
from keras_mixer import data, distribute, training
from helpers.folders import count_decodes, random_classes, write_image_folder
from helpers.tiny import TINY

GLOBAL_BATCH, STEPS = 8, 3


def main(strategy, cpu_devices, recipe, out, model_parallel="0"):
    dist = distribute.setup_distribution(strategy, int(cpu_devices), int(model_parallel))
    keras.utils.set_random_seed(0)
    folder = write_image_folder(os.path.join(os.path.dirname(os.path.abspath(out)), "images", "train"),
                                random_classes(GLOBAL_BATCH * STEPS))
    config = training.TrainConfig(**{**TINY, "variant": "custom", "image_size": 32},
                                  recipe=recipe, learning_rate=0.05, warmup_epochs=0.0,
                                  weight_decay=0.1)
    with count_decodes() as decoded:
        source = data.load_source(os.path.dirname(folder), "train", shard=dist.shard)
        dataset = data.make_dataset(source, dist.pipeline_batch_size(GLOBAL_BATCH), 32,
                                    training=False, drop_remainder=True)
        dataset = dist.distribute_dataset(dataset, GLOBAL_BATCH)
        with dist.scope():
            model = training.build_model(config, source.num_classes)
            training.compile_model(model, config, total_steps=10, warmup_steps=0)
        dist.prepare_model(model)
        model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    # Every process reads the weights (multi-process JAX: global arrays); the chief saves them.
    arrays = [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]
    if dist.is_chief:
        np.savez(out, *arrays)
    print(f"done {dist.name} replicas={dist.replicas} decoded={decoded[0]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
