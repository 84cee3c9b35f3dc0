"""A tiny training run on the digits; optionally SIGKILLs itself after an epoch.

Usage: KERAS_BACKEND=... python -m workers.resume_worker RUN_DIR KILL_AFTER_EPOCH [SETTINGS_JSON]
KILL_AFTER_EPOCH is 0-based (-1: never); SETTINGS_JSON overrides TrainConfig fields.
``$KERAS_MIXER_TEST_KILL_AT`` kills it at a named point of train() instead
(see ``keras_mixer.training.rundir.kill_point``).
"""

import json
import os
import signal
import sys

import keras
from keras_mixer.training import TrainConfig, train

EPOCHS = 3


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def config(run_dir, **overrides):
    """The tiny run's settings."""
    settings = dict(run_dir=run_dir, image_size=8, patch_size=4, num_blocks=1, hidden_dim=16,
                    tokens_mlp_dim=8, channels_mlp_dim=32, epochs=EPOCHS, steps_per_epoch=4,
                    batch_size=16, export=False, progress="2")
    return TrainConfig(**{**settings, **overrides})


def main(run_dir, kill_after, settings="{}"):
    train(config(run_dir, **json.loads(settings)), callbacks=[KillAfterEpoch(int(kill_after))])
    print("worker done")


if __name__ == "__main__":
    main(*sys.argv[1:])
